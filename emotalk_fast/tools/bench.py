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

from ..model import checkpoint as ckpt
from ..model.config import EmoTalkConfig
from ..backends.registry import DEFAULT as DEFAULT_ENCODERS
from ..errors import InvalidInput
from ..streaming.budget import measure as measure_budget
from .measure import PeakMemory, device_name, generated_speech, peak_rss_mb, sync, versions
from ..runtime.device import cpu_description


def run_bench(*, seconds: float = 10.0, device="auto", dtype=None, preset: str = "emotalk", repeats: int = 3,
              threads: int | None = None, skip_startup: bool = False, encoders: str = DEFAULT_ENCODERS,
              progress: Callable[[str], None] | None = None) -> dict:
    """Time `repeats` animations of `seconds` of generated speech; returns the figures as a dict.
    encoders: how the encoders run (Animator's `encoders`: a backend that animates whole clips).
    progress(message) is called at each step and after each timed run."""
    from ..animator import Animator
    from ..backends.registry import resolve as resolve_encoders
    from ..runtime.device import resolve_device, resolve_dtype
    from ..runtime.threads import set_threads

    if not seconds > 0 or repeats < 1:
        raise InvalidInput(f"seconds must be > 0 and repeats >= 1, got {seconds!r}, {repeats!r}")
    set_threads(threads)
    report = progress or (lambda message: None)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    resolve_encoders(encoders).verify(device, dtype, offline=True)  # before minutes of building
    cfg = EmoTalkConfig.from_name(preset)

    report(f"building the '{preset}' architecture with random weights on {device}")
    t0 = time.perf_counter()
    animator = Animator.from_config(cfg, device=device, dtype=dtype, warn_random=False)  # float: the checkpoint start-up saves
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in animator.model.parameters())

    startup_s = user_peak_mb = None
    if not skip_startup:
        report(f"timing start-up: save a checkpoint ({params / 1e6:.1f} M parameters), load it, animate 1 s")
        with tempfile.TemporaryDirectory() as tmp:
            # stored in the dtype it runs in, as `convert --dtype` writes it: no cast at load
            ckpt.save_pretrained({k: v.to(dtype) for k, v in animator.model.state_dict().items()}, cfg, tmp)
            first = generated_speech(1.0)
            sync(device)
            t0 = time.perf_counter()
            loaded = Animator.from_pretrained(tmp, device=device, dtype=dtype, encoders=encoders)
            loaded.animate(first)
            sync(device)
            startup_s = time.perf_counter() - t0
            del loaded
            report(f"start-up {startup_s:.2f} s; peak memory of a fresh process that loads it and animates "
                   f"{seconds:g} s")
            user_peak_mb = _fresh_process_peak_mb(tmp, seconds, device, dtype, threads, encoders)

    animator = Animator(animator.model, device=device, dtype=dtype, encoders=encoders)  # the same weights
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

    report("timing a live hop of 100 ms for one stream, beside its memory floor")
    live = measure_budget(animator.model, device, dtype, animator.stream_settings(hop_ms=100), 1,
                          animator.encoder_backend)
    return {
        "device": device_name(device), "dtype": str(dtype).replace("torch.", ""), "backend": animator.backend,
        "encoders": encoders, "preset": preset, "parameters": params, "audio_seconds": seconds,
        "frames": anim.num_frames, "seconds": times, "median_seconds": median,
        "real_time_factor": median / seconds, "ms_per_audio_second": 1000 * median / seconds,
        "startup_seconds": startup_s, "build_random_seconds": build_s,
        "peak_memory_mb": mem.peak_mb, "run_memory_mb": mem.delta_mb, "memory_kind":
            "GPU allocator peak" if device.type == "cuda" else "resident set sampled every 2 ms",
        # what a user's process needs (load the checkpoint, animate the clip), and this whole
        # benchmark process (which also built random weights and ran the start-up test)
        "user_process_peak_mb": user_peak_mb,
        "bench_process_peak_mb": peak_rss_mb(),
        "live_hop_ms": 1000 * live.seconds(1), "live_hop_encoding": live.settings.encoding,
        "encoder_weight_bytes": live.floor.weight_bytes, "read_bandwidth_gbs": live.floor.bandwidth / 1e9,
        "hop_floor_ms": 1000 * live.floor.seconds, "hop_over_floor": live.seconds(1) / live.floor.seconds,
        "torch_threads": torch.get_num_threads(), "cpu": cpu_description(), **versions(),
    }


_USER_PROCESS = """
import sys, torch
from emotalk_fast import Animator
from emotalk_fast.tools.measure import generated_speech, peak_rss_mb
path, seconds, device, dtype, threads, encoders = sys.argv[1:7]
if threads != "None":
    torch.set_num_threads(int(threads))
animator = Animator.from_pretrained(path, device=device, dtype=dtype, encoders=encoders)
animator.animate(generated_speech(float(seconds)))
print(peak_rss_mb())
"""


def _fresh_process_peak_mb(checkpoint: str, seconds: float, device, dtype, threads,
                           encoders: str) -> float | None:
    """Maximum resident set of a new process that loads `checkpoint` and animates the clip:
    the memory a user needs, which the benchmark's own process (random weights built in it)
    cannot show. CPU only (on CUDA the allocator's peak is the figure)."""
    import subprocess
    import sys

    if device.type != "cpu":
        return None
    r = subprocess.run([sys.executable, "-c", _USER_PROCESS, checkpoint, str(seconds), str(device),
                        str(dtype).replace("torch.", ""), str(threads), encoders], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the fresh-process memory run failed: {r.stderr[-2000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def format_bench(result: dict) -> str:
    """The figures of `run_bench` as the lines `emotalk-fast bench` prints."""
    r = result
    startup = "not measured (--skip-startup)" if r["startup_seconds"] is None else f"{r['startup_seconds']:.2f} s"
    user = ("not measured (--skip-startup)" if r["user_process_peak_mb"] is None
            else f"{r['user_process_peak_mb']:.0f} MB")
    threads = f"{r['torch_threads']} torch thread{'s' if r['torch_threads'] != 1 else ''}"
    also = "built random weights" + ("" if r["startup_seconds"] is None else " and ran the start-up test")
    return "\n".join([
        f"device {r['device']}, {r['dtype']}, {r['encoders']} encoders, "
        f"backend {r['backend']}, {r['parameters'] / 1e6:.1f} M parameters, "
        f"torch {r['torch']}; CPU {r['cpu']}, {threads}",
        f"{r['audio_seconds']:g} s of speech -> {r['frames']} frames in {r['median_seconds']:.3f} s "
        f"(median of {len(r['seconds'])})",
        f"real-time factor {r['real_time_factor']:.3f} ({r['ms_per_audio_second']:.1f} ms per second of audio): "
        f"{_verdict(r['real_time_factor'])}",
        f"a live hop of 100 ms ({r['live_hop_encoding']}) takes {r['live_hop_ms']:.0f} ms for 1 stream: "
        f"{r['hop_over_floor']:.1f}x its memory floor of {r['hop_floor_ms']:.0f} ms "
        f"({r['encoder_weight_bytes'] / 1e9:.2f} GB of encoder weights at {r['read_bandwidth_gbs']:.1f} GB/s)",
        f"start-up (checkpoint on disk -> first frame) {startup}",
        f"peak memory of a user's process (load the checkpoint, animate {r['audio_seconds']:g} s; its maximum "
        f"resident set): {user}",
        f"during the timed runs: {r['peak_memory_mb']:.0f} MB ({r['memory_kind']}; {r['run_memory_mb']:.0f} MB above "
        f"the loaded model); this benchmark process's maximum resident set: {r['bench_process_peak_mb']:.0f} MB "
        f"(it also {also})",
    ])


def _verdict(real_time_factor: float) -> str:
    """What a real-time factor (compute / audio) means for a user, in words."""
    if real_time_factor < 1:
        return (f"{1 / real_time_factor:.1f}x faster than real time offline (`emotalk-fast stream --realtime` "
                "says whether a live stream keeps up, and at what hop)")
    return f"{real_time_factor:.1f}x slower than real time: offline animation takes longer than the audio"
