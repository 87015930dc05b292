"""Audio in: decode files, mix to mono, resample to 16 kHz, validate. Nothing model-specific."""
from __future__ import annotations

import functools
import io
import math
from fractions import Fraction
import os
import warnings
from pathlib import Path

import numpy as np

from ..model.config import SAMPLE_RATE
from ..errors import InvalidInput, InvalidType, MissingProgram

MIN_RATE, MAX_RATE = 4_000, 384_000  # Hz; outside this a rate is almost surely a mistake
MAX_CHANNELS = 16  # a 2-D array with more "channels" than this is probably [N, channels]


SUPPORTED_FORMATS = "WAV, FLAC, OGG/Vorbis, OGG/Opus or MP3 (what libsndfile reads)"


def _decode_error(where: str, e: Exception) -> InvalidInput:
    """soundfile's error without its object repr or path, and what it does read."""
    reason = str(e).split(": ", 1)[-1] if str(e).startswith("Error opening") else str(e)
    return InvalidInput(f"cannot read audio from {where}: {reason.rstrip('.')}; expected {SUPPORTED_FORMATS}")


def read_audio_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file -> (float32 [channels, N], sample rate).

    soundfile (libsndfile) reads WAV/FLAC/OGG/...; without it, WAV is read with scipy.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not an audio file")
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    short = wav_truncation(path)
    if short:
        warnings.warn(short, stacklevel=2)
    try:
        import soundfile
    except ImportError:  # optional at run time: fall back to scipy's WAV reader
        soundfile = None
    try:
        if soundfile is not None:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            return np.ascontiguousarray(data.T), int(rate)
        from scipy.io import wavfile

        rate, data = wavfile.read(str(path))
        data = _to_float32(np.asarray(data))
        return np.ascontiguousarray(data.reshape(len(data), -1).T), int(rate)
    except Exception as e:
        if path.stat().st_size == 0:
            raise InvalidInput(f"{path} is empty (0 bytes): no audio") from None
        raise _decode_error(str(path), e) from None


def read_audio_bytes(data: bytes, where: str = "stdin") -> tuple[np.ndarray, int]:
    """An audio file's bytes (e.g. piped in) -> (float32 [channels, N], sample rate)."""
    if not data:
        raise InvalidInput(f"{where} is empty: no audio")
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        raise _decode_error(where, e) from None
    return np.ascontiguousarray(samples.T), int(rate)


def wav_truncation(path: str | os.PathLike) -> str | None:
    """For a WAV file whose data chunk promises more bytes than the file holds (a cut-short
    download or recording): a message saying so; else None. The samples present still read."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = f.read(4), int.from_bytes(f.read(4), "little")
            if chunk == b"data":
                held = size - pos - 8
                if length > held and length != 0xFFFFFFFF:  # 0xFFFFFFFF: written while streaming
                    return (f"{path} is shorter than its header says: {held} of {length} bytes of audio "
                            f"({100 * held / length:.0f} %); animating what is there")
                return None
            pos += 8 + length + (length & 1)
    return None


def _to_float32(x: np.ndarray) -> np.ndarray:
    """Integer PCM -> float in [-1, 1); floats pass through as float32."""
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return (x.astype(np.float32) - 128.0) / 128.0
    if x.dtype.kind == "i":
        return (x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)
    raise InvalidType(f"audio samples must be floating point or integer PCM, got dtype {x.dtype}")


def _as_array(audio) -> np.ndarray:
    try:
        import torch

        if isinstance(audio, torch.Tensor):
            audio = audio.detach().to("cpu")
            audio = audio.float().numpy() if audio.is_floating_point() else audio.numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(audio, (list, tuple)):
        audio = np.asarray(audio, dtype=np.float32)
    if not isinstance(audio, np.ndarray):
        raise InvalidType(f"audio must be a path, a numpy array, a torch tensor or a list of samples, "
                          f"got {type(audio).__name__}")
    return audio


def prepare_audio(audio, sample_rate: int | None = None, min_samples: int = 1) -> np.ndarray:
    """Any supported input -> mono float32 [N] at 16 kHz, validated.

    audio: a path, or an array/tensor [N] or [channels, N]; channels are averaged.
    sample_rate: rate of an array input (default 16 kHz); for a file, its own rate is used.
    """
    samples, rate, where = load_mono(audio, sample_rate)
    samples = resample(samples, rate, SAMPLE_RATE)
    if samples.size < min_samples:
        raise InvalidInput(
            f"{where} is too short: {samples.size} samples at 16 kHz ({1000 * samples.size / SAMPLE_RATE:.1f} ms); "
            f"need at least {min_samples} ({1000 * min_samples / SAMPLE_RATE:.1f} ms)")
    return samples


def load_mono(audio, sample_rate: int | None = None) -> tuple[np.ndarray, int, str]:
    """A path or an array/tensor [N] / [channels, N] -> (mono float32 [N] at its own rate, the
    rate, how to name it in messages); channels averaged, empty or non-finite input refused."""
    if isinstance(audio, (str, os.PathLike)):
        samples, rate = read_audio_file(audio)
        if sample_rate is not None and sample_rate != rate:
            raise InvalidInput(f"sample_rate={sample_rate} given, but {audio} is recorded at {rate} Hz")
        where = str(audio)
    else:
        samples = _to_float32(_as_array(audio))
        rate = SAMPLE_RATE if sample_rate is None else sample_rate
        where = "audio"
    rate = check_rate(rate)
    if samples.ndim == 2:
        if samples.shape[0] > MAX_CHANNELS:
            raise InvalidInput(f"{where} has shape {list(samples.shape)}: expected [N] or [channels, N] "
                               f"(at most {MAX_CHANNELS} channels); transpose a [N, channels] array")
        samples = samples.mean(axis=0, dtype=np.float64).astype(np.float32)
    elif samples.ndim != 1:
        raise InvalidInput(f"{where} has shape {list(samples.shape)}: expected [N] or [channels, N]")
    if samples.size == 0:
        raise InvalidInput(f"{where} is empty")
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise InvalidInput(f"{where} has {bad} NaN or infinite samples")
    return samples, rate, where


def load_waveform(audio, sample_rate: int | None) -> tuple[np.ndarray | None, int | None]:
    """An optional waveform to draw or play beside an animation: a path (its own rate), samples
    with their `sample_rate`, or None -> (mono float32 [N] or None, its rate or None)."""
    if audio is None:
        return None, None
    if sample_rate is None and not isinstance(audio, (str, os.PathLike)):
        raise InvalidInput("give the sample_rate of audio samples")
    samples, rate, _ = load_mono(audio, sample_rate)
    return samples, rate


MAX_RESAMPLE_FACTOR = 16000  # bounds the polyphase filter's design (20 * factor taps)


def resample_ratio(rate_in: int, rate_out: int) -> tuple[int, int]:
    """(up, down) for rate_in -> rate_out: the exact ratio in lowest terms when both factors are
    at most MAX_RESAMPLE_FACTOR (every rate to or from 16 kHz below it, and every common rate:
    44100 -> 16000 is 160/441), else the closest ratio whose factors are: 383999 -> 16000 runs
    at 1/24. Over every integer rate 4..384 kHz to 16 kHz the ratio is off by at most 3.2e-5
    (31999 Hz at 1/2): under 20 ms over a 10 min stream. Exact factors like 16000/383999 would
    need a filter of 7.7 million taps."""
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    if max(up, down) <= MAX_RESAMPLE_FACTOR:
        return up, down
    small, large = sorted((rate_in, rate_out))
    f = Fraction(small, large).limit_denominator(MAX_RESAMPLE_FACTOR)  # < 1: both terms bounded
    return (f.denominator, f.numerator) if rate_out > rate_in else (f.numerator, f.denominator)


def resampled_length(n: int, rate_in: int, rate_out: int) -> int:
    """How many samples `resample` makes of n."""
    up, down = resample_ratio(rate_in, rate_out)
    return -(-n * up // down)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy's Kaiser-windowed FIR) at `resample_ratio`; identity when the
    rates match."""
    if rate_in == rate_out:
        return np.ascontiguousarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    up, down = resample_ratio(rate_in, rate_out)
    return resample_poly(x.astype(np.float64), up, down).astype(np.float32)


def check_rate(rate) -> int:
    """A sample rate this library accepts, as an int (a float that is a whole number, 44100.0, is one)."""
    if isinstance(rate, (float, np.floating)) and float(rate).is_integer():
        rate = int(rate)
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidInput(f"unsupported sample rate {rate!r}: expected an integer in {MIN_RATE}..{MAX_RATE} Hz")
    return int(rate)


@functools.lru_cache(maxsize=16)
def _polyphase_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """resample_poly's filter as [up phases, taps] (read-only, shared by every stream at this
    ratio: designing it takes up to ~0.7 s), and the first output index that is kept."""
    from scipy.signal import firwin

    half_len = 10 * max(up, down)
    h = firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0)) * up
    pre_pad = down - half_len % down  # centres the filter, as resample_poly does
    h = np.concatenate([np.zeros(pre_pad), h])
    taps = np.zeros((up, -(-len(h) // up)))
    for p in range(up):
        taps[p, : len(h[p::up])] = h[p::up]
    taps.flags.writeable = False
    return taps, (half_len + pre_pad) // down  # outputs before this are dropped


class StreamingResampler:
    """`resample`'s output (scipy's resample_poly: Kaiser-windowed FIR, zero padding), produced
    as input arrives: each output sample is emitted once every input sample it reads is in.

    Output m reads inputs i <= (m * down) // up through the polyphase taps of its phase; the
    tail after `flush` reads zeros past the end, as resample_poly does.
    """

    BLOCK_ELEMENTS = 1 << 20  # outputs x taps computed at once: temporaries of ~30 MB, whatever the chunk

    def __init__(self, rate_in: int, rate_out: int):
        self.up, self.down = resample_ratio(rate_in, rate_out)
        self.taps, self.first = _polyphase_filter(self.up, self.down)
        self.num_taps = self.taps.shape[1]
        self.reset()

    def reset(self) -> None:
        self._x = np.zeros(0)
        self._x_start = 0  # absolute index of _x[0]
        self._n_in = 0
        self._next = self.first  # next output index (of the full convolution)

    def _emit(self, end: int) -> np.ndarray:
        """Outputs self._next..end, in blocks so that memory stays bounded whatever the chunk."""
        block = max(1, self.BLOCK_ELEMENTS // self.num_taps)
        blocks = [self._emit_block(lo, min(lo + block, end)) for lo in range(self._next, end, block)]
        self._next = max(self._next, end)
        oldest = (self._next * self.down) // self.up - self.num_taps + 1  # first input still needed
        if oldest > self._x_start:
            self._x = self._x[oldest - self._x_start :]
            self._x_start = oldest
        return np.concatenate(blocks).astype(np.float32) if blocks else np.zeros(0, np.float32)

    def _emit_block(self, lo: int, hi: int) -> np.ndarray:
        m = np.arange(lo, hi)
        newest = (m * self.down) // self.up
        idx = newest[:, None] - np.arange(self.num_taps)[None, :]
        valid = (idx >= 0) & (idx < self._n_in)
        vals = np.where(valid, self._x[np.clip(idx - self._x_start, 0, max(len(self._x) - 1, 0))], 0.0) \
            if len(self._x) else np.zeros(idx.shape)
        return (self.taps[(m * self.down) % self.up] * vals).sum(axis=1)

    def push(self, samples: np.ndarray) -> np.ndarray:
        self._x = np.concatenate([self._x, samples.astype(np.float64)])
        self._n_in += len(samples)
        # output m is final once input (m * down) // up has arrived
        return self._emit((self._n_in * self.up - 1) // self.down + 1 if self._n_in else self._next)

    def flush(self) -> np.ndarray:
        """The rest: in total ceil(n_in * up / down) samples, like resample_poly."""
        total = -(-self._n_in * self.up // self.down)
        return self._emit(max(self._next, self.first + total))


def espeak_speech(text: str, voice: str | None = None, speed: int | None = None, pitch: int | None = None,
                  rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech synthesised by espeak-ng (which must be installed), mono float32 at `rate`.
    voice/speed (words per minute)/pitch (0-99): espeak-ng's own defaults when None."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = espeak_wav(Path(tmp) / "speech.wav", text, voice, speed, pitch)
        samples, native = read_audio_file(path)
    return resample(samples.mean(0), native, rate)


def espeak_program() -> str:
    """The espeak-ng program's path, or MissingProgram saying how to install it."""
    import shutil

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MissingProgram("espeak-ng is not installed (Debian/Ubuntu: sudo apt-get install espeak-ng; macOS: "
                             "brew install espeak-ng)")
    return exe


def espeak_wav(path: str | os.PathLike, text: str, voice: str | None = None, speed: int | None = None,
               pitch: int | None = None) -> Path:
    """Write espeak-ng's own WAV of `text` (16-bit, its native rate) to `path`."""
    import subprocess

    exe = espeak_program()
    options = [flag for flag, value in (("-v", voice), ("-s", speed), ("-p", pitch)) if value is not None
               for flag in (flag, str(value))]
    subprocess.run([exe, *options, "-w", str(path), text], check=True, capture_output=True)
    return Path(path)
