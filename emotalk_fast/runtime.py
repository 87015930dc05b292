"""Where and how a model runs: device, dtype and decoder backend, each resolved once from
what the user asked for ("auto", a name or a torch object) to a concrete choice."""
from __future__ import annotations

import os

import torch

from .config import BACKENDS
from .errors import InvalidInput

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


def resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise InvalidInput(f"unsupported dtype {dtype}: use float32, bfloat16 or float16")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise InvalidInput(f"unsupported dtype {dtype!r}: use one of {sorted(_DTYPES)} or a torch dtype")


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
        return f"triton is not installed or does not import ({e}); pip install 'emotalk-fast[triton]'"
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
