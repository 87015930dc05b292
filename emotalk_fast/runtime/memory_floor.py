"""The memory floor of a live hop: a hop encodes a few new rows, so it does little arithmetic but
reads every weight of both encoders; no hop is faster than those bytes over the machine's memory
read bandwidth. `bench` and the live commands' start-up lines say how far a hop is above it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import torch

from .threads import cores

_PROBE_BYTES = 1 << 30  # past the caches (some cloud CPUs share hundreds of MB of L3): what a hop's weights are to the CPU


@lru_cache(maxsize=None)
def read_bandwidth(device_type: str = "cpu") -> float:
    """Bytes per second this machine reads from memory, all cores at once (a GPU: its own memory):
    the best of a few sums of a large float32 tensor, measured once per process."""
    device = torch.device(device_type)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cores())
    try:
        x = torch.ones(_PROBE_BYTES // 4, device=device)
        best = float("inf")
        for _ in range(4):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x.sum().item()
            best = min(best, time.perf_counter() - t0)
        return _PROBE_BYTES / best
    finally:
        torch.set_num_threads(threads)


def encoder_weight_bytes(model) -> int:
    """The bytes of both encoders' parameters and buffers as the model runs them (an int8 view's
    int8 layers at one byte a weight), each tensor once."""
    seen, total = set(), 0
    for encoder in (model.content_encoder, model.emotion_encoder):
        for t in [*encoder.parameters(), *encoder.buffers()]:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class MemoryFloor:
    """A hop's weight bytes over the read bandwidth."""

    weight_bytes: int
    bandwidth: float  # bytes per second

    @classmethod
    def of(cls, model, device) -> "MemoryFloor":
        return cls(encoder_weight_bytes(model), read_bandwidth(torch.device(device).type))

    @property
    def seconds(self) -> float:
        return self.weight_bytes / self.bandwidth

    def describe(self, hop_s: float | None = None) -> str:
        """"2.6x its memory floor of 141 ms (2.43 GB of encoder weights at 17.2 GB/s)"."""
        floor = (f"memory floor of {1000 * self.seconds:.0f} ms ({self.weight_bytes / 1e9:.2f} GB of encoder weights at "
                 f"{self.bandwidth / 1e9:.1f} GB/s)")
        return floor if hop_s is None else f"{hop_s / self.seconds:.1f}x its {floor}"
