"""What the kernel launchers share: dot precision by dtype, log2(e), the unit-stride helper,
the attention kernels' input checks.

Imports torch only, so it is importable (with the references) without triton.
"""
import torch

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * LOG2E): the kernels' softmax runs on exp2
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: fp32 inputs in IEEE (a float32 promise, not tf32); fp16/bf16
    inputs are exact in any mode ("tf32" is the fast default)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def unit_last(x: torch.Tensor) -> torch.Tensor:
    """x itself when its last dim is unit-stride (the kernels' vector loads), else a copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def check_qkv(q, k, v, slopes, period) -> None:
    """The attention kernels' shared input checks: q, k, v [B, H, T, Dh] in one float dtype,
    fp32 slopes [H], a period >= 1."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected q, k, v of rank 4 [B,H,T,D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.dtype not in FLOAT_DTYPES or not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one of fp32/fp16/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[3] > 256:
        raise ValueError(f"head_dim {q.shape[3]} > 256 is not supported")
    if slopes.shape != (q.shape[1],) or slopes.dtype != torch.float32:
        raise ValueError(f"slopes must be fp32 [{q.shape[1]}], got {slopes.dtype} {tuple(slopes.shape)}")
    if int(period) < 1:
        raise ValueError(f"period must be >= 1, got {period}")
