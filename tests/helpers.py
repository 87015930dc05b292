"""Shared test code: tolerance-aware comparisons and fixture paths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emotalk_fast.model.config import DecoderConfig, EmoTalkConfig, EncoderConfig

FIXTURES = Path(__file__).parent / "fixtures"


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def assert_close(out, ref, atol: float, name: str = "") -> float:
    """Fail on a single element off by more than `atol`, or any NaN/inf; say where.

    Returns the max abs error so callers can report it.
    """
    out, ref = _as_numpy(out).astype(np.float64), _as_numpy(ref).astype(np.float64)
    label = f"{name}: " if name else ""
    assert out.shape == ref.shape, f"{label}shape {out.shape} != reference {ref.shape}"
    if not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out))[0]
        raise AssertionError(f"{label}non-finite value {out[tuple(bad)]} at index {tuple(bad)}")
    if out.size == 0:
        return 0.0
    err = np.abs(out - ref)
    worst = np.unravel_index(np.argmax(err), err.shape)
    max_err = float(err[worst])
    assert max_err <= atol, (
        f"{label}max abs error {max_err:.3g} > {atol:.3g} at index {tuple(int(i) for i in worst)} "
        f"(got {out[worst]:.6g}, expected {ref[worst]:.6g}); "
        f"{int((err > atol).sum())} of {err.size} elements off"
    )
    return max_err


def dtype_tolerance(out, same_dtype_torch, ref64, eps: float = 1e-6) -> float:
    """flash-attention's rule: allow twice torch's own error in the same dtype, plus eps."""
    torch_err = float((_as_numpy(same_dtype_torch).astype(np.float64) - _as_numpy(ref64)).__abs__().max())
    return 2.0 * torch_err + eps


def assert_close_to_dtype(out, same_dtype_torch, ref64, name: str = "", eps: float = 1e-6) -> float:
    """max|out - ref64| <= 2 * max|torch_same_dtype - ref64| + eps."""
    return assert_close(out, ref64, dtype_tolerance(out, same_dtype_torch, ref64, eps), name)


def load_oracle(name: str) -> dict[str, np.ndarray]:
    """One of the oracle fixture archives (outputs of the released code), as a dict."""
    with np.load(FIXTURES / "oracle_mini" / f"{name}.npz") as d:
        return {k: d[k] for k in d.files}


SPEECH = FIXTURES / "speech"  # espeak-ng's WAVs of the words the tests speak (espeak-ng 1.51)


def espeak_speech(text: str, voice: str = "en", speed: int = 160, pitch: int = 50,
                  rate: int = 16_000) -> np.ndarray:
    """Real synthetic speech, mono float32 at `rate`: espeak-ng's stored WAV of these words and
    settings (tests/fixtures/speech), so the tests run without espeak-ng; words not stored yet
    are spoken by espeak-ng now (the test skips without it). EMOTALK_STORE_SPEECH=1 stores them."""
    import hashlib
    import os
    import shutil
    import tempfile

    from emotalk_fast.io.audio import espeak_wav, read_audio_file, resample

    stored = SPEECH / f"{hashlib.sha1(repr((text, voice, speed, pitch)).encode()).hexdigest()[:16]}.wav"
    if stored.exists():
        samples, native = read_audio_file(stored)
    else:
        import pytest

        if shutil.which("espeak-ng") is None:
            pytest.skip("espeak-ng is not installed (apt-get install espeak-ng) and this speech is not stored")
        with tempfile.TemporaryDirectory() as tmp:
            path = espeak_wav(Path(tmp) / "speech.wav", text, voice, speed, pitch)
            if os.environ.get("EMOTALK_STORE_SPEECH") == "1":
                SPEECH.mkdir(exist_ok=True)
                shutil.copyfile(path, stored)
            samples, native = read_audio_file(path)
    return resample(samples.mean(0), native, rate)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for servers the tests start)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, seconds: float, poll_s: float = 0.02) -> None:
    """Poll `predicate` until it holds; fail the test after `seconds`."""
    import time

    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(poll_s)


def _kernel_dtypes():
    import pytest

    return [
        pytest.param(torch.float32, id="fp32"),
        pytest.param(torch.float16, id="fp16"),
        pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="the Triton interpreter's bf16 tl.dot is broken; GPU only")),
    ]


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # kernels run under the interpreter on CPU
KERNEL_DTYPES = _kernel_dtypes()  # what every kernel test sweeps


def decode_in_steps(decoder, x, memory, cache, sizes, slots=None):
    """Decode x, memory [B, T, D] in steps of `sizes` frames through a RingKVCache whose
    positions this caller keeps (as the engine does per stream) -> [B, T, D]."""
    B = x.shape[0]
    slots = list(range(B)) if slots is None else list(slots)
    out, pos = [], 0
    for n in sizes:
        starts = torch.full((B,), pos, device=x.device)
        out.append(decoder.step_at(x[:, pos : pos + n], memory[:, pos : pos + n], cache, slots, starts,
                                   min(cache.capacity, pos + n)))
        pos += n
    return torch.cat(out, 1)


def die_with_this_process() -> None:
    """A Popen preexec_fn: the child gets SIGKILL when the test process dies, however it dies
    (pytest killed included), so no server a test started outlives it (Linux prctl)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# Model configurations the parity tests run: the tiny preset and one with every width odd
CONFIGS = {
    "tiny": EmoTalkConfig.from_name("tiny"),
    # odd widths, an odd positional-conv tap count, 8 decoder heads, another period, PPE on
    "odd": EmoTalkConfig(
        EncoderConfig(hidden_size=48, num_layers=1, num_heads=3, intermediate_size=40, conv_dim=(24,) * 7,
                      num_pos_conv_taps=7, num_pos_conv_groups=3),
        EncoderConfig(hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
                      num_pos_conv_taps=16, num_pos_conv_groups=4, num_labels=7),
        DecoderConfig(content_dim=20, emotion_dim=12, style_dim=8, num_heads=8, ff_dim=24, period=7, ppe=True),
    ),
}


def stream_all(stream, samples, sizes, seed):
    """Push `samples` through a stream in chunks drawn from `sizes` (by `seed`), then flush -> every
    frame, each return checked as float32 [k, 52]."""
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < len(samples):
        n = int(rng.choice(sizes))
        out.append(stream.push(samples[i : i + n]))
        i += n
    out.append(stream.flush())
    assert all(o.dtype == np.float32 and o.shape[1] == 52 for o in out)
    return np.concatenate(out)
