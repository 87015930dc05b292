"""The decoder's fusable steps in PyTorch (`TorchOps`): the reference numerics and the CPU path.
`TritonOps(TorchOps)` in triton_ops.py runs the same steps on emotalk_fast.kernels; the decoder
picks one set once (`PeriodicCausalDecoder.set_backend`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels.reference import periodic_alibi_bias, periodic_bias_of_distance

QUERY_BLOCK = 512  # query rows per attention call: bounds the bias to [H, 512, T]


def attention_with_periodic_bias(q, k, v, slopes, period, offset: int = 0) -> torch.Tensor:
    """q [B, H, Tq, Dh] at positions offset..offset+Tq-1; k, v [B, H, Tk, Dh] at 0..Tk-1."""
    out = torch.empty_like(q)
    for start in range(0, q.shape[2], QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, q.shape[2])
        k_len = min(offset + stop, k.shape[2])  # keys past the block's last query are masked anyway
        bias = periodic_alibi_bias(slopes, period, stop - start, k_len, offset + start, q.dtype)
        out[:, :, start:stop] = F.scaled_dot_product_attention(
            q[:, :, start:stop], k[:, :, :k_len], v[:, :, :k_len], attn_mask=bias)
    return out


def ragged_attention(q, k, v, slopes, period: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """q [B, H, t, Dh] at absolute positions q_pos [B, t]; k, v [B, H, L, Dh] at k_pos [B, L]
    (-1: empty). Each sequence has its own positions; the bias depends on q_pos - k_pos only."""
    bias = periodic_bias_of_distance(slopes, period, q_pos[:, :, None] - k_pos[:, None, :], q.dtype)
    bias = bias.masked_fill((k_pos < 0)[:, None, None, :], float("-inf"))  # [B, H, t, L]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def positions(t: int, offset, device) -> torch.Tensor:
    """Absolute positions of t frames after `offset`: [t] for an int, [B, t] for a tensor [B]."""
    steps = torch.arange(t, device=device)
    return steps + offset if isinstance(offset, int) else offset.to(device)[:, None] + steps


class TorchOps:
    """The decoder's fusable steps in PyTorch: the reference numerics, and the CPU path."""

    @staticmethod
    def positional_qkv(x, qkv: nn.Linear, pe, offset):
        """-> (x + pe[(t + offset) mod period], its packed q/k/v projection); pe None: no PPE.
        offset: an int, or a tensor [B] of per-sequence offsets."""
        if pe is not None:
            x = x + pe[positions(x.shape[1], offset, x.device) % pe.shape[0]]
        return x, qkv(x)

    attention = staticmethod(attention_with_periodic_bias)

    @staticmethod
    def ring_attention(q, cache, slots, starts: torch.Tensor, span: int, slopes, period: int):
        """q [B, H, t, Dh] at positions starts[b].. against the RingKVCache `slots` (their new keys
        written)."""
        t = q.shape[2]
        keys, values, k_pos = cache.read(slots, starts + t, span)
        return ragged_attention(q, keys, values, slopes, period, positions(t, starts, q.device), k_pos)

    @staticmethod
    def add_norm(y, residual, norm: nn.LayerNorm):
        return norm(residual + y)

    @staticmethod
    def linear_add_norm(x, linear: nn.Linear, residual, norm: nn.LayerNorm):
        return norm(residual + linear(x))
