"""Shared pieces of the benchmark suites: the case matrix (device x provider x dtype), cached
release-size models, and one `measure` that records results in the user's units.

Providers side by side in one group, `f"{op}-{dtype}-{shape}"`:
  reference             training/'s EmoTalkReference (Hugging Face Wav2Vec2Model pieces);
                        float32, or torch.autocast for a lower dtype
  emotalk_fast-torch    the library, PyTorch backend
  emotalk_fast-triton   the library, Triton backend (CUDA only; skipped while not built)
"""
from __future__ import annotations

import contextlib
import functools
import gc

import pytest
import torch

from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.model.checkpoint import random_release_state_dict, release_to_fast
from emotalk_fast.tools.measure import PeakMemory, device_name, generated_speech, sync, versions

HAS_CUDA = torch.cuda.is_available()
CONFIG = EmoTalkConfig.from_name("emotalk")
PROVIDERS = ("reference", "emotalk_fast-torch", "emotalk_fast-triton")
DTYPES = ("float32", "bfloat16", "float16")


def skip_reason(device: str, provider: str, dtype: str) -> str | None:
    """Why a (device, provider, dtype) case cannot run here, decided at collection time."""
    if device == "cuda" and not HAS_CUDA:
        return "GPU case: CUDA is not available"
    if device == "cpu" and provider.endswith("triton"):
        return "the Triton backend runs on CUDA (its CPU interpreter is for tests, not timing)"
    if device == "cpu" and dtype == "float16":
        return "float16 is a GPU dtype (CPUs have no fast float16 matmul); use bfloat16 on CPU"
    return None


def cases(extra_skip=None) -> list:
    """pytest params (device, provider, dtype) for every combination; the ones that cannot run
    here are collected and skipped with their reason, never dropped."""
    out = []
    for device in ("cpu", "cuda"):
        for dtype in DTYPES:
            for provider in PROVIDERS:
                reason = skip_reason(device, provider, dtype) or (extra_skip and extra_skip(device, provider, dtype))
                marks = [pytest.mark.gpu] if device == "cuda" else []
                if reason:
                    marks.append(pytest.mark.skip(reason=reason))
                out.append(pytest.param(device, provider, dtype, marks=marks, id=f"{device}-{provider}-{dtype}"))
    return out


def require(device: str, provider: str, dtype: str) -> None:
    """Checks that need the live machine (run inside the test)."""
    if device == "cpu" and dtype == "bfloat16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bfloat16 (AVX512-BF16 / AMX)")
    if provider.endswith("triton"):
        from emotalk_fast.runtime.device import resolve_backend

        try:
            resolve_backend("triton", torch.device(device))
        except ValueError as e:
            pytest.skip(str(e))


# --- models, built once per session (release size: 638 M parameters) -----------------------
@functools.lru_cache(maxsize=1)
def _weights() -> dict[str, torch.Tensor]:
    return release_to_fast(random_release_state_dict(CONFIG, seed=0, rule="fast"), CONFIG)


@functools.lru_cache(maxsize=None)
def fast_animator(device: str, dtype: str, backend: str = "torch") -> Animator:
    return Animator.from_state_dict(CONFIG, dict(_weights()), device=device, dtype=dtype, backend=backend)


@functools.lru_cache(maxsize=None)
def reference_model(device: str):
    from emotalk_fast.training.reference import EmoTalkReference

    return EmoTalkReference(CONFIG).eval().to(device)  # its own random init: speed does not depend on it


def free_models() -> None:
    for cached in (_weights, fast_animator, reference_model):
        cached.cache_clear()
    gc.collect()
    if HAS_CUDA:
        torch.cuda.empty_cache()


@contextlib.contextmanager
def reference_context(device: str, dtype: str):
    """The reference in a lower dtype is torch's standard recipe: autocast."""
    with torch.inference_mode():
        if dtype == "float32":
            yield
        else:
            with torch.autocast(device, dtype=getattr(torch, dtype)):
                yield


@functools.lru_cache(maxsize=None)
def speech(seconds: float):
    return generated_speech(seconds)


# --- measuring ------------------------------------------------------------------------------
def measure(benchmark, fn, *, op: str, dtype: str, shape: str, device: str, provider: str,
            audio_seconds: float | None = None, rounds: int = 3, warmup_rounds: int = 1, **info) -> None:
    """Time `fn` (synchronised), group it with the other providers, and put the user's units
    in extra_info: real-time factor and ms per second of audio (when `audio_seconds`), peak
    memory (`peak_memory_mb`: the process, other cached models included on CPU;
    `run_memory_mb`: above what was in use before the rounds), device name, versions."""
    dev = torch.device(device)
    benchmark.group = f"{op}-{dtype}-{shape}"

    def timed():
        out = fn()
        sync(dev)
        return out

    with PeakMemory(dev) as mem:
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    extra = {"provider": provider, "device": device_name(dev), "dtype": dtype, **versions(),
             "torch_threads": torch.get_num_threads(), "peak_memory_mb": round(mem.peak_mb, 1),
             "run_memory_mb": round(mem.delta_mb, 1), **info}
    if audio_seconds is not None:
        extra["audio_seconds"] = audio_seconds
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None and audio_seconds:
        median = stats.stats.median
        extra["real_time_factor"] = median / audio_seconds
        extra["ms_per_audio_second"] = 1000 * median / audio_seconds
    if dev.type == "cuda":
        import triton.testing

        extra["do_bench_median_ms"] = triton.testing.do_bench(timed, return_mode="median")
    benchmark.extra_info.update(extra)
