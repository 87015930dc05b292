"""Periodic-ALiBi attention for a few new queries against a KV cache (split-K decode).

Same function as `periodic_alibi_attention` with keys = cache[:offset+Tq]:

    out[b,h,r] = sum_j softmax_j(q_r . k_j * scale - slopes[h] * floor((offset + r - j) / period)) v_j
    over j <= offset + r,   r = 0..Tq-1

The cache already holds the new queries' keys at positions offset..offset+Tq-1 (causal among
them). The visible keys are cut into chunks of `chunk` keys; one program per (chunk, b, h)
runs the same online-softmax block step as prefill and writes a normalised partial output
and its log2-sum-exp; a second small kernel merges the chunks.

Shapes: q [B,H,Tq,D] with 1 <= Tq <= 16, k_cache/v_cache [B,H,S,D] with S >= offset+Tq
(unit-stride last dim, other strides free), slopes fp32 [H].
Dtypes: fp32/fp16/bf16, fp32 accumulation; partials are fp32. Limits: D <= 256.
"""
import math

import torch
import triton
import triton.language as tl

from ._common import LOG2E, dot_precision, unit_last
from .periodic_alibi_attention import _check_qkv, _periodic_alibi_block
from .reference import periodic_alibi_decode_ref  # noqa: F401  (the reference, re-exported)

MAX_QUERIES = 16


@triton.jit
def _periodic_alibi_decode_kernel(
    Q, K, V, PartOut, PartLse, Slopes,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    H, Tq, D, offset, period, qk_scale, chunk, n_chunks,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kv_len = offset + Tq
    lo = split * chunk
    hi = tl.minimum(lo + chunk, kv_len)
    # keys < offset + 1 are visible to every new query: no mask there; C and floor division
    # differ for a negative numerator, the clamp makes both give lo
    full_hi = tl.maximum(lo, lo + ((tl.minimum(hi, offset + 1) - lo) // BLOCK_N) * BLOCK_N)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    pos_m = offs_m + offset
    io_mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=io_mask, other=0.0)
    slope2 = tl.load(Slopes + h) * 1.4426950408889634
    # int64: long caches times wide strides overflow int32
    k_blk = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + lo.to(tl.int64) * stride_kt
    v_blk = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + lo.to(tl.int64) * stride_vt

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, full_hi, BLOCK_N):
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

    # a query may see no key of this chunk (the chunk holds only later new keys): lse = -inf
    seen = l_i > 0
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    out = tl.where(seen[:, None], acc / tl.where(seen, l_i, 1.0)[:, None], 0.0)
    row = (bh.to(tl.int64) * n_chunks + split) * BLOCK_M + offs_m  # partials: [B*H, n_chunks, BLOCK_M, BLOCK_D]
    tl.store(PartLse + row, lse)
    tl.store(PartOut + row[:, None] * BLOCK_D + offs_d[None, :], out)


@triton.jit
def _merge_chunks_kernel(PartOut, PartLse, Out, stride_ob, stride_oh, stride_ot, H, D, n_chunks,
                         BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0)
    bh = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    rows = (bh.to(tl.int64) * n_chunks + offs_s) * BLOCK_M + r
    lse = tl.load(PartLse + rows, mask=offs_s < n_chunks, other=float("-inf"))
    m = tl.max(lse, 0)  # chunk 0 holds key 0, visible to every query: m is finite
    denom = tl.sum(tl.exp2(lse - m), 0)
    out = tl.zeros([BLOCK_D], tl.float32)
    for s in range(0, n_chunks):  # one D-row per chunk: no [chunks, D] tile in registers
        row = (bh.to(tl.int64) * n_chunks + s) * BLOCK_M + r
        w = tl.exp2(tl.load(PartLse + row) - m)
        out += w * tl.load(PartOut + row * BLOCK_D + offs_d)
    out = out / denom
    b = bh // H
    h = bh % H
    o_ptr = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + r * stride_ot
    tl.store(o_ptr + offs_d, out.to(Out.dtype.element_ty), mask=offs_d < D)


def decode_chunk(kv_len, max_chunks=64, min_chunk=256):
    """Keys per program: 256 until the cache needs more than `max_chunks` of them."""
    return max(min_chunk, 64 * triton.cdiv(triton.cdiv(kv_len, max_chunks), 64))


# Candidates (BLOCK_N, num_warps, num_stages, min_chunk) to time on a GPU at head_dim 208;
# BLOCK_M is fixed at MAX_QUERIES (tl.dot needs M >= 16).
CANDIDATE_CONFIGS = [(64, 8, 2, 256), (32, 8, 2, 256), (64, 4, 2, 256), (64, 8, 2, 512), (64, 8, 3, 128)]


def decode_config(block_d):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M = 16 new queries (tl.dot needs M >= 16)."""
    return MAX_QUERIES, 64, 4 if block_d <= 128 else 8, 2


def periodic_alibi_decode(q, k_cache, v_cache, slopes, period, offset, scale=None):
    _check_qkv(q, k_cache, v_cache, slopes, period)
    B, H, Tq, D = q.shape
    if not 1 <= Tq <= MAX_QUERIES:
        raise ValueError(f"decode takes 1..{MAX_QUERIES} new queries, got {Tq}")
    if offset < 0 or k_cache.shape[2] < offset + Tq:
        raise ValueError(f"cache length {k_cache.shape[2]} < offset {offset} + {Tq} new queries")
    q, k_cache, v_cache = unit_last(q), unit_last(k_cache), unit_last(v_cache)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    kv_len = offset + Tq
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_M, BLOCK_N, num_warps, num_stages = decode_config(BLOCK_D)
    chunk = decode_chunk(kv_len)
    n_chunks = triton.cdiv(kv_len, chunk)
    part_out = torch.empty(B * H, n_chunks, BLOCK_M, BLOCK_D, device=q.device, dtype=torch.float32)
    part_lse = torch.empty(B * H, n_chunks, BLOCK_M, device=q.device, dtype=torch.float32)
    out = torch.empty(B, H, Tq, D, device=q.device, dtype=q.dtype)
    _periodic_alibi_decode_kernel[(n_chunks, B * H)](
        q, k_cache, v_cache, part_out, part_lse, slopes,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3],
        H, Tq, D, int(offset), int(period), scale * LOG2E, chunk, n_chunks,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
        PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    _merge_chunks_kernel[(Tq, B * H)](
        part_out, part_lse, out, *out.stride()[:3], H, D, n_chunks,
        BLOCK_M=BLOCK_M, BLOCK_S=triton.next_power_of_2(n_chunks), BLOCK_D=BLOCK_D, num_warps=4,
    )
    return out
