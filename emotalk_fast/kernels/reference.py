"""Pure-PyTorch references of every kernel in this package, importable without triton.

Each `<op>_ref(..., upcast=True)` computes in float64 and returns float64 (the truth);
`upcast=False` computes in the input's dtype (what torch itself achieves in that dtype). The
tests and benchmarks compare the kernels against these, and the library's CPU path builds its
bias and positional table with the same functions, so there is one definition of each.
"""
import math

import torch
import torch.nn.functional as F


def periodic_alibi_bias(slopes, period, Tq, Tk, offset=0, dtype=torch.float32):
    """bias [H,Tq,Tk] = -slopes[h] * floor((i + offset - j) / period), -inf where j > i + offset."""
    i = torch.arange(Tq, device=slopes.device)[:, None] + offset
    j = torch.arange(Tk, device=slopes.device)[None, :]
    return periodic_bias_of_distance(slopes, period, i - j, dtype)


def periodic_bias_of_distance(slopes, period, dist, dtype=torch.float32):
    """dist [..., Tq, Tk] (query position - key position) -> bias [..., H, Tq, Tk]:
    -slopes[h] * floor(dist / period), -inf where dist < 0 (a key after its query)."""
    steps = torch.div(dist.clamp(min=0), period, rounding_mode="floor").to(dtype).unsqueeze(-3)
    bias = -slopes.to(dtype)[:, None, None] * steps
    return bias.masked_fill((dist < 0).unsqueeze(-3), float("-inf"))


def periodic_positional_encoding(period, dim, dtype=torch.float32, device=None):
    """FaceFormer's periodic sinusoidal table [period, dim]: pe[pos, 0::2] = sin(pos * div),
    pe[pos, 1::2] = cos(pos * div), div = exp(arange(0, dim, 2) * -ln(10000) / dim).
    Built in fp32, like the original, then cast."""
    position = torch.arange(0, period, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(period, dim, dtype=torch.float32, device=device)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term[: dim // 2])
    return pe.to(dtype)


def periodic_alibi_attention_ref(q, k, v, slopes, period, scale=None, offset=0, seq_lens=None, upcast=True):
    """Explicit-bias attention; seq_lens [B]: keys at positions >= seq_lens[b] are ignored and
    query rows at such positions are zero."""
    dtype = torch.float64 if upcast else q.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    Tq, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale + periodic_alibi_bias(slopes, period, Tq, Tk, offset, dtype)
    if seq_lens is not None:
        key_pad = torch.arange(Tk, device=q.device)[None, :] >= seq_lens.to(q.device)[:, None].long()
        scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    if seq_lens is not None:
        pos = torch.arange(Tq, device=q.device)[None, :] + offset
        q_pad = pos >= seq_lens.to(q.device)[:, None].long()
        out = out.masked_fill(q_pad[:, None, :, None], 0.0)
    return out


def periodic_alibi_decode_ref(q, k_cache, v_cache, slopes, period, offset, scale=None, upcast=True):
    """Decode of Tq new queries at positions offset.. against cache[:offset + Tq]."""
    n = offset + q.shape[2]
    return periodic_alibi_attention_ref(q, k_cache[:, :, :n], v_cache[:, :, :n], slopes, period,
                                        scale=scale, offset=offset, upcast=upcast)


def ring_positions(ends, capacity, span):
    """The absolute position each ring index 0..span-1 holds, [B, span], for sequences whose
    next position is ends [B] (position p lives at index p % capacity; -1: never written)."""
    ends = ends[:, None]
    index = torch.arange(span, device=ends.device)[None, :]
    # the newest position p < end with p = index (mod capacity)
    return ends - 1 - torch.remainder(ends - 1 - index, capacity)


def periodic_alibi_ring_decode_ref(q, k_ring, v_ring, slopes, period, offsets, slots, scale=None, upcast=True):
    """Decode of Tq new queries at positions offsets[b].. against ring row slots[b]."""
    dtype = torch.float64 if upcast else q.dtype
    k, v = k_ring[slots].to(dtype), v_ring[slots].to(dtype)
    q = q.to(dtype)
    Tq, D = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    k_pos = ring_positions(offsets + Tq, k_ring.shape[2], k_ring.shape[2])
    q_pos = offsets[:, None] + torch.arange(Tq, device=q.device)[None, :]
    bias = periodic_bias_of_distance(slopes, period, q_pos[:, :, None] - k_pos[:, None, :], dtype)
    bias = bias.masked_fill((k_pos < 0)[:, None, None, :], float("-inf"))
    return torch.softmax((q @ k.transpose(-1, -2)) * scale + bias, dim=-1) @ v


def add_layer_norm_ref(x, residual, weight, bias, eps=1e-5, upcast=True):
    dtype = torch.float64 if upcast else x.dtype
    h = x.to(dtype) + residual.to(dtype)
    return F.layer_norm(h, h.shape[-1:], weight.to(dtype), bias.to(dtype), eps)


def linear_add_layer_norm_ref(x, weight, bias, residual, ln_weight, ln_bias, eps=1e-5, upcast=True):
    dtype = torch.float64 if upcast else x.dtype
    h = residual.to(dtype) + F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    return F.layer_norm(h, h.shape[-1:], ln_weight.to(dtype), ln_bias.to(dtype), eps)


def qkv_ppe_ref(x, weight, bias=None, pe=None, offset=0, upcast=True):
    dtype = torch.float64 if upcast else x.dtype
    h = x.to(dtype)
    if pe is not None:
        t = (torch.arange(x.shape[1], device=x.device) + offset) % pe.shape[0]
        h = h + pe.to(dtype)[t]
    return F.linear(h, weight.to(dtype), None if bias is None else bias.to(dtype))
