"""`dtype="auto"` on a CPU with native bfloat16 (AVX512-BF16 or AMX): bfloat16 where this machine
runs the encoders' work faster in it than in float32, by measurement. Native support is not
enough: without AMX bfloat16 can run slower than float32 (docs/performance.md).

The measurement runs one wav2vec2 CNN front end over 2 s of audio and one release-size encoder
layer over its 60 frames, in both dtypes, interleaved, the fastest of two (about a second),
weighted as an encoder runs them (the front end once, 24 layers). It is made once per machine
(CPU, torch version, threads) and kept in the cache folder (`dtype_choice.json`).
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_write, default_cache_dir
from ..model.config import SAMPLE_RATE, EncoderConfig
from ..model.encoder import ConvFrontEnd, EncoderLayer

CACHE_FILE = "dtype_choice.json"
CANDIDATES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_PROXY_SECONDS = 2  # audio the measurement reads (its front end; its layer: the frames of it)
_chosen: dict[str, DtypeChoice] = {}  # this process's choices, by machine key


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    seconds: dict[str, float]  # dtype name -> the measurement's seconds in it
    cached: bool  # read from the cache folder, not measured now

    def describe(self) -> str:
        times = " against ".join(f"{name} {s * 1e3:.0f} ms" for name, s in
                                 sorted(self.seconds.items(), key=lambda kv: kv[0] != self.name))
        return f"{self.name}: the faster here ({times}{', measured earlier' if self.cached else ''})"

    @property
    def name(self) -> str:
        return str(self.dtype).replace("torch.", "")


def machine_key(cpu_class: str) -> str:
    """The machine a measurement holds for: the CPU (its model and class), torch, the threads."""
    caps = [f"{v}={os.environ[v]}" for v in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
            if os.environ.get(v)]  # a process restricted to fewer instructions is another machine
    return "; ".join([_cpu_model(), cpu_class, *caps, f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_dtypes(repeats: int = 2) -> dict[str, float]:
    """Seconds of the measurement (module docstring) in each candidate dtype, the fastest of
    `repeats` after a warm-up, the dtypes interleaved (a noisy machine slows both alike)."""
    cfg = EncoderConfig()
    generator = torch.Generator().manual_seed(0)
    wave = torch.randn(1, _PROXY_SECONDS * SAMPLE_RATE, generator=generator) * 0.1
    frames = torch.randn(1, 30 * _PROXY_SECONDS, cfg.hidden_size, generator=generator)
    front, layer = ConvFrontEnd(cfg).eval(), EncoderLayer(cfg).eval()
    parts = {name: (copy.deepcopy(front).to(dtype), copy.deepcopy(layer).to(dtype)) for name, dtype in
             CANDIDATES.items()}
    best = {name: (float("inf"), float("inf")) for name in CANDIDATES}
    with torch.inference_mode():
        for run in range(repeats + 1):  # the first warms up
            for name, (f, layer_) in parts.items():
                dtype = CANDIDATES[name]
                t0 = time.perf_counter()
                f(wave.to(dtype))
                t1 = time.perf_counter()
                layer_(frames.to(dtype), None)
                t2 = time.perf_counter()
                if run:
                    best[name] = (min(best[name][0], t1 - t0), min(best[name][1], t2 - t1))
    return {name: front_s + cfg.num_layers * layer_s for name, (front_s, layer_s) in best.items()}


def cpu_dtype_choice(cpu_class: str) -> DtypeChoice:
    """The faster of float32 and bfloat16 on this CPU (it computes bfloat16 natively; `cpu_class`:
    device.cpu_description()): measured once per machine, read back from the cache folder after
    (a corrupt file is measured again)."""
    key = machine_key(cpu_class)
    if key in _chosen:
        return _chosen[key]
    path = default_cache_dir() / CACHE_FILE
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            raise ValueError
    except (OSError, ValueError):
        known = {}
    seconds, cached = known.get(key), True
    if not (isinstance(seconds, dict) and set(seconds) == set(CANDIDATES)
            and all(isinstance(s, (int, float)) and s > 0 for s in seconds.values())):
        seconds, cached = time_dtypes(), False
        known[key] = seconds
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(known, indent=1)))
        except OSError:
            pass  # an unwritable cache only costs the measurement again next time
    name = min(seconds, key=seconds.get)
    _chosen[key] = DtypeChoice(CANDIDATES[name], dict(seconds), cached)
    return _chosen[key]
