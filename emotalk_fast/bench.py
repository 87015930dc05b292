"""`emotalk-fast bench`: time the model on random weights and generated speech (no download).

Speed does not depend on the weights, so the release-size architecture with random weights
times exactly what a real checkpoint would.
"""
from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .config import SAMPLE_RATE

_SENTENCES = (
    "The quick brown fox jumps over the lazy dog while the rain keeps falling on the roof.",
    "Could you please tell me the way to the station before the last train leaves tonight?",
    "I never expected the results to be this good, it really is a wonderful surprise.",
)


def generated_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Real speech from espeak-ng when installed, tiled to `seconds`; otherwise a voiced
    harmonic signal with syllable-rate amplitude modulation (same cost for the model)."""
    n = int(seconds * SAMPLE_RATE)
    if shutil.which("espeak-ng"):
        from .audio import read_audio_file, resample

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "speech.wav"
            subprocess.run(["espeak-ng", "-w", str(path), " ".join(_SENTENCES)], check=True, capture_output=True)
            samples, rate = read_audio_file(path)
        speech = resample(samples.mean(0), rate, SAMPLE_RATE)
        return np.resize(speech, n).astype(np.float32)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * voiced * envelope + 0.003 * rng.standard_normal(n)).astype(np.float32)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(args) -> dict:
    from .animator import Animator, resolve_device

    if args.seconds <= 0 or args.repeats < 1:
        raise ValueError("--seconds must be > 0 and --repeats >= 1")
    device = resolve_device(args.device)
    _say(f"building the '{args.preset}' architecture with random weights")
    t0 = time.perf_counter()
    animator = Animator.from_config(args.preset, device=device, dtype=args.dtype)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in animator.model.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        _say(f"saving a checkpoint ({params / 1e6:.1f} M parameters) to time start-up")
        animator.save_pretrained(tmp)
        first = generated_speech(1.0)
        _sync(device)
        t0 = time.perf_counter()
        loaded = Animator.from_pretrained(tmp, device=device, dtype=args.dtype)
        loaded.animate(first)
        _sync(device)
        startup_s = time.perf_counter() - t0
        del loaded

    speech = generated_speech(args.seconds)
    _say(f"warm-up on {args.seconds:g} s of speech")
    animator.animate(speech)
    times = []
    for r in range(args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        anim = animator.animate(speech)
        _sync(device)
        times.append(time.perf_counter() - t0)
        _say(f"run {r + 1}/{args.repeats}: {times[-1]:.3f} s")
    best = float(np.median(times))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(animator.dtype).replace("torch.", ""), "backend": animator.backend,
        "preset": args.preset, "parameters": params, "audio_seconds": args.seconds,
        "frames": anim.num_frames, "median_seconds": best,
        "real_time_factor": best / args.seconds, "ms_per_audio_second": 1000 * best / args.seconds,
        "startup_seconds": startup_s, "build_random_seconds": build_s,
        "peak_memory_mb": peak_memory_mb(device), "torch": torch.__version__,
    }
    print(f"device {result['device']}, {result['dtype']}, backend {result['backend']}, "
          f"{params / 1e6:.1f} M parameters")
    print(f"{args.seconds:g} s of speech -> {anim.num_frames} frames in {best:.3f} s (median of {args.repeats})")
    print(f"real-time factor {result['real_time_factor']:.3f}  ({result['ms_per_audio_second']:.1f} ms per "
          f"second of audio)")
    print(f"start-up (checkpoint on disk -> first frame) {startup_s:.2f} s; peak memory "
          f"{result['peak_memory_mb']:.0f} MB")
    return result
