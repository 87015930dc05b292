"""Causal flash attention with a periodic ALiBi bias computed in-kernel.

    out[b,h,i] = sum_j softmax_j(q_i . k_j * scale + bias(h,i,j)) v_j,   j <= i + offset
    bias(h,i,j) = -slopes[h] * floor((i + offset - j) / period)

i indexes the queries of this call, `offset` is the absolute position of query 0 and the
keys sit at absolute positions 0..Tk-1 (so prefill is offset=0, Tq=Tk; a query past the last
key sees every key).

Shapes: q [B,H,Tq,D], k/v [B,H,Tk,D] (any batch/head/time strides; a last dim that is not
unit-stride is copied), slopes fp32 [H], seq_lens optional int32 [B]: sequence b is valid
for absolute positions < seq_lens[b]; keys past it are ignored and output rows at padded
query positions are written as zeros. Every valid row sees key 0, so no row is empty.
Dtypes: fp32/fp16/bf16, fp32 accumulation and softmax; fp32 dots run in IEEE (not tf32).
Limits: D <= 256 (padded to a power of two and masked), any T, period >= 1.
"""
import math

import torch
import triton
import triton.language as tl

from ._common import LOG2E, check_qkv, dot_precision, unit_last
from .reference import periodic_alibi_attention_ref, periodic_alibi_bias  # noqa: F401  (re-exported)



@triton.jit
def _periodic_alibi_block(acc, l_i, m_i, q, K_blk, V_blk, start_n, pos_m, kv_len,
                          stride_kt, stride_vt, qk_scale, slope2, period, D,
                          MASKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          PRECISION: tl.constexpr):
    """One online-softmax step over keys start_n..start_n+BLOCK_N (log2 domain).
    K_blk/V_blk already point at key start_n. MASKED blocks (the diagonal and the ragged
    tail) check causality and kv_len; the others are fully visible to every row."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D  # head_dim 208 is padded to 256; padded lanes load 0 and add nothing
    if MASKED:
        n_ok = start_n + offs_n < kv_len
        kt = tl.load(K_blk + offs_n[None, :] * stride_kt + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(V_blk + offs_n[:, None] * stride_vt + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        kt = tl.load(K_blk + offs_n[None, :] * stride_kt + offs_d[:, None], mask=d_ok[:, None], other=0.0)
        v = tl.load(V_blk + offs_n[:, None] * stride_vt + offs_d[None, :], mask=d_ok[None, :], other=0.0)
    dist = pos_m[:, None] - (start_n + offs_n)[None, :]
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale - slope2 * (dist // period).to(tl.float32)
    if MASKED:
        s = tl.where((dist >= 0) & n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # row with no key yet: avoid inf-inf
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _periodic_alibi_attention_kernel(
    Q, K, V, Out, Slopes, SeqLens,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
    H, Tq, Tk, D, offset, period, qk_scale,
    HAS_SEQ_LENS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BLOCK_M
    kv_len = Tk  # keys at positions >= kv_len are ignored
    q_end = offset + Tq  # query rows at positions >= q_end are padding (written as zeros)
    if HAS_SEQ_LENS:
        seq_len = tl.load(SeqLens + b)
        kv_len = tl.minimum(Tk, seq_len)
        q_end = tl.minimum(q_end, seq_len)
    # int64 bases: b * stride_b overflows int32 on large batches; in-tile offsets stay int32
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    pos_m = offs_m + offset
    q = tl.load(q_base + offs_m[:, None].to(tl.int64) * stride_qt + offs_d[None, :],
                mask=(offs_m[:, None] < Tq) & (offs_d[None, :] < D), other=0.0)
    slope2 = tl.load(Slopes + h) * 1.4426950408889634  # bias in the exp2 domain

    # keys this block can see: [0, hi). Keys past the block's last query are never loaded,
    # and blocks wholly below [full_hi) need no mask: only the diagonal pays for causality.
    hi = tl.minimum(kv_len, start_m + offset + BLOCK_M)
    hi = tl.where(start_m + offset < q_end, hi, 0)  # whole block is padding
    full_hi = (tl.minimum(hi, start_m + offset + 1) // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # advance pointers block by block: 64-bit pointer arithmetic, no int32 start_n * stride
    k_blk = k_base
    v_blk = v_base
    for start_n in range(0, full_hi, BLOCK_N):
        acc, l_i, m_i = _periodic_alibi_block(
            acc, l_i, m_i, q, k_blk, v_blk, start_n, pos_m, kv_len, stride_kt, stride_vt,
            qk_scale, slope2, period, D, False, BLOCK_N, BLOCK_D, PRECISION)
        k_blk += BLOCK_N * stride_kt
        v_blk += BLOCK_N * stride_vt
    for start_n in range(full_hi, hi, BLOCK_N):
        acc, l_i, m_i = _periodic_alibi_block(
            acc, l_i, m_i, q, k_blk, v_blk, start_n, pos_m, kv_len, stride_kt, stride_vt,
            qk_scale, slope2, period, D, True, BLOCK_N, BLOCK_D, PRECISION)
        k_blk += BLOCK_N * stride_kt
        v_blk += BLOCK_N * stride_vt

    valid = (pos_m < q_end) & (l_i > 0)
    out = acc / tl.where(valid, l_i, 1.0)[:, None]
    out = tl.where(valid[:, None], out, 0.0)
    tl.store(o_base + offs_m[:, None].to(tl.int64) * stride_ot + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < Tq) & (offs_d[None, :] < D))


# Candidates (BLOCK_M, BLOCK_N, num_warps, num_stages) to time on a GPU at head_dim 208
# (padded to 256); attention_config picks the first that compiled without spills for fp16.
CANDIDATE_CONFIGS = [(64, 32, 8, 2), (64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2), (64, 32, 8, 3)]


def attention_config(block_d):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a padded head_dim; kept register-resident
    (no spills) on sm_80/sm_90 for fp16 -- see tests/kernels/test_kernels_compile.py."""
    if block_d <= 128:
        return 64, 64, 4, 2
    return 64, 32, 8, 2


def periodic_alibi_attention(q, k, v, slopes, period, scale=None, offset=0, seq_lens=None):
    check_qkv(q, k, v, slopes, period)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if seq_lens is not None and (seq_lens.shape != (B,) or seq_lens.dtype != torch.int32):
        raise ValueError(f"seq_lens must be int32 [{B}], got {seq_lens.dtype} {tuple(seq_lens.shape)}")
    q, k, v = unit_last(q), unit_last(k), unit_last(v)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out = torch.empty(B, H, Tq, D, device=q.device, dtype=q.dtype)
    if Tq == 0 or B * H == 0:
        return out
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_M, BLOCK_N, num_warps, num_stages = attention_config(BLOCK_D)
    grid = (triton.cdiv(Tq, BLOCK_M), B * H)
    _periodic_alibi_attention_kernel[grid](
        q, k, v, out, slopes, seq_lens if seq_lens is not None else slopes,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        H, Tq, Tk, D, int(offset), int(period), scale * LOG2E,
        HAS_SEQ_LENS=seq_lens is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
        PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
