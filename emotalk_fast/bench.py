"""`emotalk-fast bench`: time the model on random weights and generated speech (no download).

Speed does not depend on the weights, so the release-size architecture with random weights
times exactly what a real checkpoint would. The measuring pieces live in measure.py.
"""
from __future__ import annotations

import tempfile
import time
from typing import Callable

import numpy as np
import torch

from .config import EmoTalkConfig
from .measure import PeakMemory, device_name, generated_speech, random_weights, sync, versions


def run_bench(*, seconds: float = 10.0, device="auto", dtype=None, preset: str = "emotalk", repeats: int = 3,
              threads: int | None = None, skip_startup: bool = False,
              progress: Callable[[str], None] | None = None) -> dict:
    """Time `repeats` animations of `seconds` of generated speech; returns the figures as a dict.
    progress(message) is called at each step and after each timed run."""
    from .animator import Animator
    from .runtime import resolve_device, resolve_dtype

    if not seconds > 0 or repeats < 1:
        raise ValueError(f"seconds must be > 0 and repeats >= 1, got {seconds!r}, {repeats!r}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    report = progress or (lambda message: None)
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    cfg = EmoTalkConfig.from_name(preset)

    report(f"building the '{preset}' architecture with random weights on {device}")
    t0 = time.perf_counter()
    animator = Animator.from_state_dict(cfg, random_weights(cfg), device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in animator.model.parameters())

    startup_s = None
    if not skip_startup:
        report(f"timing start-up: save a checkpoint ({params / 1e6:.1f} M parameters), load it, animate 1 s")
        with tempfile.TemporaryDirectory() as tmp:
            animator.save_pretrained(tmp)
            first = generated_speech(1.0)
            sync(device)
            t0 = time.perf_counter()
            loaded = Animator.from_pretrained(tmp, device=device, dtype=dtype)
            loaded.animate(first)
            sync(device)
            startup_s = time.perf_counter() - t0
            del loaded
        report(f"start-up {startup_s:.2f} s")

    report(f"generating {seconds:g} s of speech and warming up")
    speech = generated_speech(seconds)
    animator.animate(speech)

    times = []
    with PeakMemory(device) as mem:
        for r in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            anim = animator.animate(speech)
            sync(device)
            times.append(time.perf_counter() - t0)
            report(f"run {r + 1}/{repeats}: {times[-1]:.3f} s")
    median = float(np.median(times))
    return {
        "device": device_name(device), "dtype": str(dtype).replace("torch.", ""), "backend": animator.backend,
        "preset": preset, "parameters": params, "audio_seconds": seconds,
        "frames": anim.num_frames, "seconds": times, "median_seconds": median,
        "real_time_factor": median / seconds, "ms_per_audio_second": 1000 * median / seconds,
        "startup_seconds": startup_s, "build_random_seconds": build_s,
        "peak_memory_mb": mem.peak_mb, "run_memory_mb": mem.delta_mb, "memory_kind":
            "GPU allocator peak" if device.type == "cuda" else "process resident set",
        "torch_threads": torch.get_num_threads(), **versions(),
    }


def format_bench(result: dict) -> str:
    """The figures of `run_bench` as the lines `emotalk-fast bench` prints."""
    r = result
    startup = "not measured (--skip-startup)" if r["startup_seconds"] is None else f"{r['startup_seconds']:.2f} s"
    return "\n".join([
        f"device {r['device']}, {r['dtype']}, backend {r['backend']}, {r['parameters'] / 1e6:.1f} M parameters, "
        f"torch {r['torch']}",
        f"{r['audio_seconds']:g} s of speech -> {r['frames']} frames in {r['median_seconds']:.3f} s "
        f"(median of {len(r['seconds'])})",
        f"real-time factor {r['real_time_factor']:.3f}  ({r['ms_per_audio_second']:.1f} ms per second of audio)",
        f"start-up (checkpoint on disk -> first frame) {startup}; peak memory {r['peak_memory_mb']:.0f} MB "
        f"({r['memory_kind']}; {r['run_memory_mb']:.0f} MB above the loaded model)",
    ])
