"""Packed QKV projection with a periodic positional encoding added on the fly.

    out[b,t] = (x[b,t] + pe[(t + offset) mod period]) @ weight^T + bias

pe is a [period, C] table (e.g. `periodic_positional_encoding`); with pe=None this is a plain
x @ weight^T + bias. `offset` is the absolute position of t=0 (streaming chunks).
Shapes: x [B,T,C] (any strides, unit-stride last dim preferred), weight [N,C] (N = 3C' for
packed q/k/v), bias [N] or None, pe [period,C] any float dtype. Output [B,T,N] in x.dtype.
Dtypes: fp32/fp16/bf16; x + pe is summed in fp32 and rounded to the weight dtype before the
dot; fp32 accumulation (fp32 dots in IEEE, not tf32).
"""
import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, dot_precision, unit_last
from .reference import periodic_positional_encoding, qkv_ppe_ref  # noqa: F401  (re-exported)


@triton.jit
def _qkv_ppe_kernel(
    X, PE, W, Bias, Out,
    stride_xb, stride_xt, stride_xc, stride_pe, stride_wn, stride_wk, stride_ob, stride_ot,
    M, T, N, C, offset, period,
    HAS_PE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < N
    b = (rows // T).to(tl.int64)  # int64: b * stride_xb overflows int32 on long batches
    t = rows % T
    x_ptrs = X + b[:, None] * stride_xb + t[:, None].to(tl.int64) * stride_xt + offs_k[None, :] * stride_xc
    pe_ptrs = PE + ((t + offset) % period)[:, None] * stride_pe + offs_k[None, :]
    w_ptrs = W + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk  # weight^T tile [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(0, C, BLOCK_K):
        k_ok = offs_k + k < C
        a = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if HAS_PE:
            pe = tl.load(pe_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            a = (a.to(tl.float32) + pe.to(tl.float32)).to(W.dtype.element_ty)
            pe_ptrs += BLOCK_K
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xc
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        acc += tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    o_ptrs = Out + b[:, None] * stride_ob + t[:, None].to(tl.int64) * stride_ot + cols[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# Candidates (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) to time on a GPU at
# C = 832, N = 2496; qkv_ppe_config uses the first two (short and long inputs).
CANDIDATE_CONFIGS = [(16, 128, 32, 4, 3), (64, 128, 32, 4, 3), (64, 64, 32, 4, 3), (128, 128, 32, 8, 3),
                     (64, 128, 64, 4, 3)]


def qkv_ppe_config(m, dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); a short BLOCK_M for streaming chunks."""
    block_m = 16 if m <= 16 else 64
    return block_m, 128, 32, 4, 3


def qkv_ppe(x, weight, bias=None, pe=None, offset=0):
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C], got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"expected fp32/fp16/bf16, got {x.dtype}")
    B, T, C = x.shape
    if weight.dim() != 2 or weight.shape[1] != C or weight.dtype != x.dtype:
        raise ValueError(f"weight must be {x.dtype} [N, {C}], got {weight.dtype} {tuple(weight.shape)}")
    N = weight.shape[0]
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias must be [{N}], got {tuple(bias.shape)}")
    if pe is not None:
        if pe.dim() != 2 or pe.shape[1] != C:
            raise ValueError(f"pe must be [period, {C}], got {tuple(pe.shape)}")
        pe = unit_last(pe)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    out = torch.empty(B, T, N, device=x.device, dtype=x.dtype)
    M = B * T
    if M == 0:
        return out
    BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages = qkv_ppe_config(M, x.dtype)
    _qkv_ppe_kernel[(triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))](
        x, pe if pe is not None else x, weight, bias if bias is not None else weight, out,
        *x.stride(), pe.stride(0) if pe is not None else 0, *weight.stride(), out.stride(0), out.stride(1),
        M, T, N, C, int(offset), pe.shape[0] if pe is not None else 1,
        HAS_PE=pe is not None, HAS_BIAS=bias is not None,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        PRECISION=dot_precision(x.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
