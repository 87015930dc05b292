"""Periodic-ALiBi attention for a few new queries against a ring KV cache (split-K decode).

Row b's sequence lives in cache row slots[b]: absolute position p at ring index p % capacity,
the newest `capacity` positions kept. Its Tq new queries sit at positions
offsets[b]..offsets[b]+Tq-1, and their keys are already in the ring (causal among them):

    out[b,h,r] = sum_j softmax_j(q_r . k_j * scale - slopes[h] * floor((offsets[b] + r - p_j) / period)) v_j
    over ring entries j holding a position p_j <= offsets[b] + r

The ring indices 0..span-1 are cut into chunks of `chunk`; one program per (chunk, b, h) runs
the online-softmax over its chunk and writes a normalised partial output and its
log2-sum-exp; a second small kernel merges the chunks. Positions come from device tensors and
the grid from `span` alone, so one launch shape serves every step (a CUDA graph can hold it).
With an int offset and identity slots this is plain in-order decode: keys at 0..offset+Tq-1.

Shapes: q [B,H,Tq,D] with 1 <= Tq <= 16, k_ring/v_ring [slots,H,capacity,D] (unit-stride last
dim, other strides free), slopes fp32 [H], offsets and slots int [B].
Dtypes: fp32/fp16/bf16, fp32 accumulation; partials are fp32. Limits: D <= 256.
"""
import math

import torch
import triton
import triton.language as tl

from ._common import LOG2E, check_qkv, dot_precision, unit_last
from .reference import periodic_alibi_decode_ref, periodic_alibi_ring_decode_ref  # noqa: F401  (re-exported)

MAX_QUERIES = 16


@triton.jit
def _periodic_alibi_decode_kernel(
    Q, K, V, PartOut, PartLse, Slopes, Slots, Offsets,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    H, Tq, D, capacity, period, qk_scale, chunk, n_chunks,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    slot = tl.load(Slots + b).to(tl.int64)
    end = tl.load(Offsets + b) + Tq  # one past the newest position in the ring
    length = tl.minimum(end, capacity)  # ring entries holding a position
    lo = split * chunk
    hi = tl.minimum(lo + chunk, length)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D  # head_dim 208 is padded to 256; padded lanes load 0 and add nothing
    pos_m = end - Tq + offs_m
    io_mask = (offs_m[:, None] < Tq) & d_ok[None, :]
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=io_mask, other=0.0)
    slope2 = tl.load(Slopes + h) * 1.4426950408889634  # the bias in the exp2 domain
    # int64: long caches times wide strides overflow int32
    k_blk = K + slot * stride_kb + h.to(tl.int64) * stride_kh + lo.to(tl.int64) * stride_kt
    v_blk = V + slot * stride_vb + h.to(tl.int64) * stride_vh + lo.to(tl.int64) * stride_vt

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        index = start_n + offs_n
        n_ok = index < hi
        kt = tl.load(k_blk + offs_n[None, :] * stride_kt + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None],
                     other=0.0)
        v = tl.load(v_blk + offs_n[:, None] * stride_vt + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0)
        # the newest position p < end with p = index (mod capacity); >= 0 for every index < length
        back = tl.where(n_ok, end - 1 - index, 0) % capacity
        dist = pos_m[:, None] - (end - 1 - back)[None, :]
        visible = (dist >= 0) & n_ok[None, :]
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale - \
            slope2 * (tl.where(visible, dist, 0) // period).to(tl.float32)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no inf - inf
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
        k_blk += BLOCK_N * stride_kt
        v_blk += BLOCK_N * stride_vt

    # a query may see no key of this chunk (the chunk is past the row's length, or holds only
    # later new keys): lse = -inf
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
    m = tl.max(lse, 0)  # the chunk holding the query's own key sees it: m is finite
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


def periodic_alibi_decode(q, k_ring, v_ring, slopes, period, offset, scale=None, *, slots=None, span=None):
    """offset: an int (every row's keys in order at 0..offset+Tq-1, no wrap: the ring must hold
    them all) or an int tensor [B] of per-row ring positions. slots: int tensor [B], the ring
    row of each query row (default row b). span: ring indices to scan, >= every row's filled
    length (default: all the int offset needs, or the whole ring for tensor offsets)."""
    _check_ring(q, k_ring, v_ring, slopes, period)
    B, H, Tq, D = q.shape
    capacity = k_ring.shape[2]
    if not 1 <= Tq <= MAX_QUERIES:
        raise ValueError(f"decode takes 1..{MAX_QUERIES} new queries, got {Tq}")
    if Tq > capacity:
        raise ValueError(f"{Tq} new queries do not fit a ring of {capacity}")
    if isinstance(offset, torch.Tensor):
        if offset.shape != (B,) or offset.dtype.is_floating_point:
            raise ValueError(f"offsets must be an int tensor [{B}], got {offset.dtype} {tuple(offset.shape)}")
        offsets = offset.to(q.device, torch.int32)
        span = capacity if span is None else span
    else:
        if offset < 0 or capacity < offset + Tq:
            raise ValueError(f"cache length {capacity} < offset {offset} + {Tq} new queries")
        offsets = torch.full((B,), int(offset), device=q.device, dtype=torch.int32)
        span = offset + Tq if span is None else span
    slots = torch.arange(B, device=q.device) if slots is None else slots
    if slots.shape != (B,) or slots.dtype.is_floating_point:
        raise ValueError(f"slots must be an int tensor [{B}], got {slots.dtype} {tuple(slots.shape)}")
    span = min(int(span), capacity)
    q, k_ring, v_ring = unit_last(q), unit_last(k_ring), unit_last(v_ring)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_M, BLOCK_N, num_warps, num_stages = decode_config(BLOCK_D)
    chunk = decode_chunk(span)
    n_chunks = triton.cdiv(span, chunk)
    part_out = torch.empty(B * H, n_chunks, BLOCK_M, BLOCK_D, device=q.device, dtype=torch.float32)
    part_lse = torch.empty(B * H, n_chunks, BLOCK_M, device=q.device, dtype=torch.float32)
    out = torch.empty(B, H, Tq, D, device=q.device, dtype=q.dtype)
    _periodic_alibi_decode_kernel[(n_chunks, B * H)](
        q, k_ring, v_ring, part_out, part_lse, slopes, slots.to(q.device, torch.int32), offsets,
        *q.stride()[:3], *k_ring.stride()[:3], *v_ring.stride()[:3],
        H, Tq, D, capacity, int(period), scale * LOG2E, chunk, n_chunks,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
        PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    _merge_chunks_kernel[(Tq, B * H)](
        part_out, part_lse, out, *out.stride()[:3], H, D, n_chunks,
        BLOCK_M=BLOCK_M, BLOCK_S=triton.next_power_of_2(n_chunks), BLOCK_D=BLOCK_D, num_warps=4,
    )
    return out


def _check_ring(q, k_ring, v_ring, slopes, period):
    """attention's checks, except that the ring's row count is its own (slots pick the rows)."""
    if k_ring.dim() != 4 or k_ring.shape != v_ring.shape:
        raise ValueError(f"k and v rings must be [slots,H,capacity,D] alike, got {tuple(k_ring.shape)}, "
                         f"{tuple(v_ring.shape)}")
    check_qkv(q, k_ring[:1].expand(q.shape[0], -1, -1, -1), v_ring[:1].expand(q.shape[0], -1, -1, -1),
               slopes, period)
