"""A linear layer fused with the residual add and post-norm LayerNorm that follow it.

    h = residual + x @ weight^T + bias
    y = (h - mean(h)) / sqrt(var(h) + eps) * ln_weight + ln_bias      (over the N features)

Shapes: x [..., K], weight [N, K], bias [N] or None, residual [..., N], ln_weight/ln_bias [N].
LayerNorm needs whole rows, so a program owns BLOCK_M full rows: N is padded to a power of
two and masked (832 -> 1024) and the K loop streams [BLOCK_K, N] slices of the weight.
Dtypes: fp32/fp16/bf16, fp32 accumulation and statistics (fp32 dots in IEEE, not tf32).
Limits: N <= 1024 (register budget of the full-row accumulator).
"""
import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, dot_precision, unit_last
from .reference import linear_add_layer_norm_ref  # noqa: F401  (the reference, re-exported)

MAX_N = 1024


@triton.jit
def _linear_add_layer_norm_kernel(
    X, W, Bias, R, LnW, LnB, Y,
    stride_xm, stride_wn, stride_wk, stride_rm, stride_ym,
    M, N, K, eps,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < N
    rows64 = rows.to(tl.int64)  # rows * stride overflows int32 for long inputs
    x_ptrs = X + rows64[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = W + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk  # weight^T slice [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(0, K, BLOCK_K):
        k_ok = offs_k + k < K
        a = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk

    io_mask = row_ok[:, None] & col_ok[None, :]
    h = acc + tl.load(R + rows64[:, None] * stride_rm + cols[None, :], mask=io_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        h += tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    mean = tl.sum(h, 1) / N  # padded columns are exactly 0 here
    d = tl.where(col_ok[None, :], h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 1) / N + eps)
    g = tl.load(LnW + cols, mask=col_ok, other=0.0).to(tl.float32)
    beta = tl.load(LnB + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * g[None, :] + beta[None, :]
    tl.store(Y + rows64[:, None] * stride_ym + cols[None, :], y.to(Y.dtype.element_ty), mask=io_mask)


# Candidates (BLOCK_M, BLOCK_K, num_warps, num_stages) to time on a GPU at N = 832 (padded to
# 1024); the default is the first fp16 one. Shared memory: BLOCK_K x 1024 x stages.
CANDIDATE_CONFIGS = [(16, 32, 8, 2), (16, 16, 8, 2), (32, 16, 8, 2), (16, 32, 4, 2), (16, 32, 8, 3)]


def linear_add_layer_norm_config(n, dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): a [BLOCK_K, 1024] weight slice is
    64 KiB per pipeline stage in either dtype (fits sm_80 shared memory twice)."""
    block_n = max(16, triton.next_power_of_2(n))
    block_k = 32 if dtype != torch.float32 else 16
    return 16, block_n, block_k, 8, 2


def linear_add_layer_norm(x, weight, bias, residual, ln_weight, ln_bias, eps=1e-5):
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"expected fp32/fp16/bf16, got {x.dtype}")
    if weight.dim() != 2 or weight.dtype != x.dtype or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must be {x.dtype} [N, {x.shape[-1]}], got {weight.dtype} {tuple(weight.shape)}")
    N, K = weight.shape
    if residual.shape != x.shape[:-1] + (N,):
        raise ValueError(f"residual must be {tuple(x.shape[:-1]) + (N,)}, got {tuple(residual.shape)}")
    for name, t in (("bias", bias), ("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is not None and t.shape != (N,):
            raise ValueError(f"{name} must be [{N}], got {tuple(t.shape)}")
    if N > MAX_N:
        raise ValueError(f"N={N} > {MAX_N}: a full output row must fit one program")
    x2, r2 = unit_last(x.reshape(-1, K)), unit_last(residual.reshape(-1, N))
    M = x2.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    if M == 0:
        return y.reshape(residual.shape)
    BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages = linear_add_layer_norm_config(N, x.dtype)
    _linear_add_layer_norm_kernel[(triton.cdiv(M, BLOCK_M),)](
        x2, weight, bias if bias is not None else ln_bias, r2, ln_weight.contiguous(), ln_bias.contiguous(), y,
        x2.stride(0), weight.stride(0), weight.stride(1), r2.stride(0), y.stride(0),
        M, N, K, float(eps),
        HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        PRECISION=dot_precision(x.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    return y.reshape(residual.shape)
