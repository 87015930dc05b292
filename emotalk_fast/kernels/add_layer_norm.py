"""Residual add fused with a post-norm LayerNorm.

    y = (h - mean(h)) / sqrt(var(h) + eps) * weight + bias,   h = x + residual

over the last dim (biased variance, as torch.nn.LayerNorm). x, residual: [..., N] of the
same shape and dtype; weight, bias: [N] (any float dtype). One program per row, the whole
row in registers (N padded to a power of two and masked, e.g. 832 -> 1024).
Dtypes: fp32/fp16/bf16 in and out; the sum and the statistics are fp32. Limits: N <= 65536.
"""
import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, unit_last
from .reference import add_layer_norm_ref  # noqa: F401  (the reference, re-exported)


@triton.jit
def _add_layer_norm_kernel(X, R, W, Bias, Y, stride_x, stride_r, stride_y, N, eps,
                           BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # rows * stride overflows int32 on long inputs
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    h = (tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
         + tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32))
    mean = tl.sum(h, 0) / N
    d = tl.where(mask, h - mean, 0.0)  # padded lanes must not enter the variance
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(Bias + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (d * rstd * w + b).to(Y.dtype.element_ty), mask=mask)


# Candidate num_warps for a row of 1024 (the decoder's 832 padded), to time on a GPU; the
# default below is ~256 columns per warp.
CANDIDATE_CONFIGS = [{"num_warps": w} for w in (1, 2, 4, 8, 16)]


def add_layer_norm_config(n):
    """(BLOCK_N, num_warps): the whole row in one program, ~256 columns per warp."""
    block_n = triton.next_power_of_2(n)
    return block_n, min(max(block_n // 256, 1), 16)


def add_layer_norm(x, residual, weight, bias, eps=1e-5):
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(f"x {x.dtype} {tuple(x.shape)} and residual {residual.dtype} "
                         f"{tuple(residual.shape)} must match")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"expected fp32/fp16/bf16, got {x.dtype}")
    N = x.shape[-1]
    if weight.shape != (N,) or bias.shape != (N,):
        raise ValueError(f"weight/bias must be [{N}], got {tuple(weight.shape)}, {tuple(bias.shape)}")
    if N > 65536:
        raise ValueError(f"row width {N} > 65536 does not fit one program")
    x2, r2 = unit_last(x.reshape(-1, N)), unit_last(residual.reshape(-1, N))
    y = torch.empty(x2.shape, device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y.reshape(x.shape)
    BLOCK_N, num_warps = add_layer_norm_config(N)
    _add_layer_norm_kernel[(x2.shape[0],)](
        x2, r2, weight.contiguous(), bias.contiguous(), y, x2.stride(0), r2.stride(0), y.stride(0),
        N, float(eps), BLOCK_N=BLOCK_N, num_warps=num_warps,
    )
    return y.reshape(x.shape)
