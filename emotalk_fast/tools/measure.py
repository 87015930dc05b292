"""Measuring: generated speech (no download), peak memory, device sync,
the device's name and the versions that a figure must name. Shared by `emotalk-fast bench`,
the pytest-benchmark suites in benchmarks/ and the engine's benchmark script.
"""
from __future__ import annotations

import os
import platform
import resource
import shutil
import threading
from pathlib import Path

import numpy as np
import torch

from ..model.config import SAMPLE_RATE

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
        from ..io.audio import espeak_speech

        return np.resize(espeak_speech(" ".join(_SENTENCES)), n).astype(np.float32)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * voiced * envelope + 0.003 * rng.standard_normal(n)).astype(np.float32)


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


def peak_rss_mb() -> float:
    """This process image's maximum resident set, MB: /proc's VmHWM (ru_maxrss would carry a
    parent's peak over fork + exec); ru_maxrss where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


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
            self.peak_mb = self.start_mb = peak_rss_mb()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
