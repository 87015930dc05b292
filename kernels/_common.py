"""What the kernel launchers share: dot precision by dtype, log2(e), the unit-stride helper.

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
