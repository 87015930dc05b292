"""Where and how a model runs: device, dtype and decoder backend, each resolved once from
what the user asked for ("auto", a name or a torch object) to a concrete choice."""
from __future__ import annotations

import os
import warnings
from functools import lru_cache

import torch

from ..model.config import BACKENDS
from ..errors import InvalidInput, install_hint

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device cuda requested but CUDA is not available: use device cpu or auto")
    return device


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


NATIVE_BF16 = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX"}  # CPU flag -> its name
# oneDNN instruction sets below native bfloat16: capping oneDNN at one of them (ONEDNN_MAX_CPU_ISA,
# as when emulating an AVX2-only machine) makes its bfloat16 emulated whatever the CPU has
_ONEDNN_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def native_bf16() -> list[str]:
    """The names of this CPU's native bfloat16 units (AVX512-BF16, AMX) that torch may use;
    none where oneDNN is capped below them."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if cap in _ONEDNN_WITHOUT_BF16:
        return []
    return [name for flag, name in NATIVE_BF16.items() if flag in cpu_flags()]


def require_cpu_float32(model, what: str) -> None:
    """Refuse, in one line, a model that is not on the CPU in float32: what `what` (the int8 or
    OpenVINO encoders: CPU speed-ups of the float32 model) needs."""
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        raise InvalidInput(f"{what} run on the CPU in float32, not on {p.device} in "
                           f"{str(p.dtype).replace('torch.', '')}")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). Elsewhere torch emulates
    it, several times slower than float32 (docs/performance.md)."""
    return bool(native_bf16())


def cpu_description() -> str:
    """The CPU class as the figures name it: torch's kernel capability and native bfloat16."""
    extras = native_bf16()
    return f"{torch.backends.cpu.get_cpu_capability()}" + (f" with {', '.join(extras)}" if extras else
                                                          ", bfloat16 emulated")


def resolve_dtype(dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """None -> float32 (the reference's precision); "auto" -> the fastest dtype on `device` (CUDA:
    bfloat16 where supported, else float16; CPU: float32 where bfloat16 is emulated, else the
    faster of the two, measured once per machine: runtime/dtype_choice.py). bfloat16 asked for
    on a CPU that emulates it warns once."""
    device = torch.device(device)
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype.lower() == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type != "cpu" or not cpu_has_native_bf16():
            return torch.float32
        from .dtype_choice import cpu_dtype_choice

        return cpu_dtype_choice(cpu_description()).dtype
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise InvalidInput(f"unsupported dtype {dtype}: use float32, bfloat16 or float16")
        resolved = dtype
    elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
        resolved = _DTYPES[dtype.lower()]
    else:
        raise InvalidInput(f"unsupported dtype {dtype!r}: use auto, one of {sorted(_DTYPES)} or a torch dtype")
    if resolved == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        _warn_emulated_bf16()
    return resolved


@lru_cache(maxsize=1)
def _warn_emulated_bf16() -> None:  # once per process
    warnings.warn("bfloat16 on this CPU is emulated (no AVX512-BF16 or AMX): expect it several times slower "
                  "than float32; use --dtype auto or float32", RuntimeWarning, stacklevel=3)


def triton_unavailable(device: torch.device, dtype: torch.dtype | None = None) -> str | None:
    """Why the Triton kernels cannot run on `device`, or None when they can. Imports triton
    (only here and in triton_ops.py, never at `import emotalk_fast`)."""
    interpret = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    if device.type != "cuda":
        if device.type != "cpu" or not interpret:
            return (f"the Triton kernels need a CUDA device, got {device}; on CPU they run only under the "
                    "Triton interpreter (set TRITON_INTERPRET=1 before importing emotalk_fast; slow, "
                    "meant for tests)")
        if dtype == torch.bfloat16:
            return "the Triton interpreter's bfloat16 dot is broken; use float32 or float16 on CPU"
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not installed or does not import ({e}); {install_hint('triton')}"
    return None


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """auto: Triton on CUDA when triton imports, else PyTorch. triton: raises if it cannot run."""
    if backend not in BACKENDS:
        raise InvalidInput(f"unknown backend {backend!r}: choose one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_unavailable(device, dtype) is None else "torch"
    if backend == "triton":
        problem = triton_unavailable(device, dtype)
        if problem:
            raise InvalidInput(f"backend triton cannot run: {problem}; use backend torch or auto")
    return backend
