"""`emotalk-fast bench`: time the model on random weights and generated speech (no download).

Speed does not depend on the weights, so the release-size architecture with random weights
times exactly what a real checkpoint would. The measuring pieces here (speech, weights, peak
memory, device name) are shared with the pytest-benchmark suites in benchmarks/.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .config import SAMPLE_RATE, EmoTalkConfig

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
        from .audio import espeak_speech

        return np.resize(espeak_speech(" ".join(_SENTENCES)), n).astype(np.float32)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * voiced * envelope + 0.003 * rng.standard_normal(n)).astype(np.float32)


def random_weights(cfg: EmoTalkConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights in this library's layout from torch's generator: a few seconds at
    release size where the numpy oracle rule takes ~15-30 s. Uniform draws with the oracle
    rule's spreads (biases std .1, norm gains 1 +- .1, matrices std 1/sqrt(fan_in)), so the
    activations stay in a realistic range (no overflow, no denormals to slow the CPU)."""
    from .model import EmoTalk

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in EmoTalk(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        w = torch.empty(shape)
        if key.endswith("bias"):
            a, centre = math.sqrt(3) * 0.1, 0.0
        elif len(shape) == 1:
            a, centre = math.sqrt(3) * 0.1, 1.0
        else:
            a, centre = math.sqrt(3 / math.prod(shape[1:])), 0.0
        out[key] = w.uniform_(centre - a, centre + a, generator=g)
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {"torch": torch.__version__, "triton": triton_version, "python": platform.python_version()}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Peak memory over a `with` block, in MB: `peak_mb` in all, `delta_mb` above what was in
    use on entry (what the block itself needed). CUDA: the allocator's peak. CPU: the
    process's resident set sampled every 2 ms (there is no peak-reset API); without /proc,
    the process's lifetime peak (ru_maxrss) and no delta."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self.start_mb = device, 0.0, 0.0
        self._stop = threading.Event()

    @property
    def delta_mb(self) -> float:
        return max(self.peak_mb - self.start_mb, 0.0)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        elif os.path.exists("/proc/self/statm"):
            self.peak_mb = self.start_mb = _rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, _rss_mb())
        else:
            self.peak_mb = self.start_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Progress:
    """One line per step on stderr; stdout stays clean for the result (or --json)."""

    def __init__(self, steps: int):
        self.steps, self.step = steps, 0

    def __call__(self, msg: str) -> None:
        self.step += 1
        print(f"[bench] [{self.step}/{self.steps}] {msg}", file=sys.stderr, flush=True)

    @staticmethod
    def note(msg: str) -> None:
        print(f"[bench]        {msg}", file=sys.stderr, flush=True)


def run_bench(args) -> dict:
    from .animator import Animator, resolve_device, resolve_dtype

    if args.seconds <= 0 or args.repeats < 1:
        raise ValueError("--seconds must be > 0 and --repeats >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    cfg = EmoTalkConfig.from_name(args.preset)
    progress = _Progress(4 if args.skip_startup else 5)

    progress(f"building the '{args.preset}' architecture with random weights on {device}")
    t0 = time.perf_counter()
    animator = Animator.from_state_dict(cfg, random_weights(cfg), device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in animator.model.parameters())

    startup_s = None
    if not args.skip_startup:
        progress(f"timing start-up: save a checkpoint ({params / 1e6:.1f} M parameters), load it, animate 1 s")
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
        progress.note(f"start-up {startup_s:.2f} s")

    progress(f"generating {args.seconds:g} s of speech and warming up")
    speech = generated_speech(args.seconds)
    animator.animate(speech)

    progress(f"timing {args.repeats} run(s)")
    times = []
    with PeakMemory(device) as mem:
        for r in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            anim = animator.animate(speech)
            sync(device)
            times.append(time.perf_counter() - t0)
            progress.note(f"run {r + 1}/{args.repeats}: {times[-1]:.3f} s")
    median = float(np.median(times))
    result = {
        "device": device_name(device), "dtype": str(dtype).replace("torch.", ""), "backend": animator.backend,
        "preset": args.preset, "parameters": params, "audio_seconds": args.seconds,
        "frames": anim.num_frames, "seconds": times, "median_seconds": median,
        "real_time_factor": median / args.seconds, "ms_per_audio_second": 1000 * median / args.seconds,
        "startup_seconds": startup_s, "build_random_seconds": build_s,
        "peak_memory_mb": mem.peak_mb, "run_memory_mb": mem.delta_mb, "torch_threads": torch.get_num_threads(), **versions(),
    }
    progress(f"done (median of {args.repeats})")
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"device {result['device']}, {result['dtype']}, backend {result['backend']}, "
          f"{params / 1e6:.1f} M parameters, torch {result['torch']}")
    print(f"{args.seconds:g} s of speech -> {anim.num_frames} frames in {median:.3f} s (median of {args.repeats})")
    print(f"real-time factor {result['real_time_factor']:.3f}  ({result['ms_per_audio_second']:.1f} ms per "
          f"second of audio)")
    startup = "not measured (--skip-startup)" if startup_s is None else f"{startup_s:.2f} s"
    memory = "GPU allocator peak" if device.type == "cuda" else "process resident set"
    print(f"start-up (checkpoint on disk -> first frame) {startup}; peak memory {mem.peak_mb:.0f} MB ({memory}; "
          f"{mem.delta_mb:.0f} MB above the loaded model)")
    return result
