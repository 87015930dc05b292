"""Audio in: decode files, mix to mono, resample to 16 kHz, validate. Nothing model-specific."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .config import SAMPLE_RATE

MIN_RATE, MAX_RATE = 4_000, 384_000  # Hz; outside this a rate is almost surely a mistake
MAX_CHANNELS = 16  # a 2-D array with more "channels" than this is probably [N, channels]


def read_audio_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file -> (float32 [channels, N], sample rate).

    soundfile (libsndfile) reads WAV/FLAC/OGG/...; without it, WAV is read with scipy.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"audio file not found: {path}")
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
        raise ValueError(f"cannot read audio file {path}: {e}") from None


def _to_float32(x: np.ndarray) -> np.ndarray:
    """Integer PCM -> float in [-1, 1); floats pass through as float32."""
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return (x.astype(np.float32) - 128.0) / 128.0
    if x.dtype.kind == "i":
        return (x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)
    raise TypeError(f"audio samples must be floating point or integer PCM, got dtype {x.dtype}")


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
        raise TypeError(f"audio must be a path, numpy array or torch tensor, got {type(audio).__name__}")
    return audio


def prepare_audio(audio, sample_rate: int | None = None, min_samples: int = 1) -> np.ndarray:
    """Any supported input -> mono float32 [N] at 16 kHz, validated.

    audio: a path, or an array/tensor [N] or [channels, N]; channels are averaged.
    sample_rate: rate of an array input (default 16 kHz); for a file, its own rate is used.
    """
    if isinstance(audio, (str, os.PathLike)):
        samples, rate = read_audio_file(audio)
        if sample_rate is not None and sample_rate != rate:
            raise ValueError(f"sample_rate={sample_rate} given, but {audio} is recorded at {rate} Hz")
        where = str(audio)
    else:
        samples = _to_float32(_as_array(audio))
        rate = SAMPLE_RATE if sample_rate is None else sample_rate
        where = "audio"
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"unsupported sample rate {rate!r}: expected an integer in {MIN_RATE}..{MAX_RATE} Hz")
    if samples.ndim == 2:
        if samples.shape[0] > MAX_CHANNELS:
            raise ValueError(f"{where} has shape {list(samples.shape)}: expected [N] or [channels, N] "
                             f"(at most {MAX_CHANNELS} channels); transpose a [N, channels] array")
        samples = samples.mean(axis=0, dtype=np.float64).astype(np.float32)
    elif samples.ndim != 1:
        raise ValueError(f"{where} has shape {list(samples.shape)}: expected [N] or [channels, N]")
    if samples.size == 0:
        raise ValueError(f"{where} is empty")
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise ValueError(f"{where} has {bad} NaN or infinite samples")
    samples = resample(samples, int(rate), SAMPLE_RATE)
    if samples.size < min_samples:
        raise ValueError(
            f"{where} is too short: {samples.size} samples at 16 kHz ({1000 * samples.size / SAMPLE_RATE:.1f} ms); "
            f"need at least {min_samples} ({1000 * min_samples / SAMPLE_RATE:.1f} ms)")
    return samples


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy's Kaiser-windowed FIR); identity when the rates match."""
    if rate_in == rate_out:
        return np.ascontiguousarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    return resample_poly(x.astype(np.float64), rate_out // g, rate_in // g).astype(np.float32)
