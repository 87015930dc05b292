"""EmoTalk's decoder: one post-norm transformer layer with a periodic ALiBi-style causal bias.

Self-attention bias for head h, query frame i, key frame j <= i:
    -slope_h * floor((i - j) / period)
computed in closed form per block of queries, so memory stays linear in the length and there
is no length cap (the release precomputes a 5000 x 5000 table). The cross-attention's memory
mask lets frame i see only memory frame i, so its softmax is exactly 1 and the block reduces
to one linear map, `cross` = out_proj(V(.)), folded at load time.

The layer is written once over four fusable steps (`TorchOps` here; `TritonOps` in
triton_ops.py runs them on emotalk_fast.kernels); `set_backend` picks the set once.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DecoderConfig
from .kernels.reference import (periodic_alibi_bias, periodic_bias_of_distance, periodic_positional_encoding,
                                ring_positions)

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


class RingKVCache:
    """Keys and values of many sequences, preallocated once: k, v [slots, H, capacity, Dh].

    Slot s holds the newest `capacity` frames of one sequence; absolute position p lives at
    ring index p % capacity, so a step writes only its new frames (nothing grows, nothing old
    is copied) and frames older than `capacity` are overwritten: a sliding window that bounds
    memory for endless streams. `ends[s]` (host) is the absolute position of slot s's next
    frame; `write` and `read` take positions as tensors, so a captured step needs no host value.
    """

    def __init__(self, slots: int, num_heads: int, head_dim: int, capacity: int, device=None, dtype=None):
        if slots < 1 or capacity < 1:
            raise ValueError(f"a KV cache needs >= 1 slot and >= 1 frame, got {slots}, {capacity}")
        # zeros: untouched pages cost no memory on the CPU until a stream reaches them
        self.k = torch.zeros(slots, num_heads, capacity, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.capacity = capacity
        self.ends = [0] * slots

    def reset(self, slot: int) -> None:
        """Forget slot's sequence (its stale frames are masked by position, never read)."""
        self.ends[slot] = 0

    def append(self, slots: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, t, Dh]: the next t frames of the sequence in each of `slots`."""
        device = self.k.device
        self.write(torch.tensor(slots, device=device), torch.tensor([self.ends[s] for s in slots], device=device),
                   k, v)
        self.advance(slots, k.shape[2])

    def write(self, slots: torch.Tensor, starts: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, t, Dh] at positions starts[b].. of slots[b] (tensors [B]); `ends` unchanged."""
        t = k.shape[2]
        if t > self.capacity:
            raise ValueError(f"{t} new frames do not fit a cache of {self.capacity}")
        rows = torch.remainder(starts[:, None] + torch.arange(t, device=starts.device), self.capacity)
        # advanced indices on dims 0 and 2 around a slice: the selection is [B, t, H, Dh]
        self.k[slots[:, None], :, rows] = k.transpose(1, 2).to(self.k.dtype)
        self.v[slots[:, None], :, rows] = v.transpose(1, 2).to(self.v.dtype)

    def advance(self, slots: list[int], t: int) -> None:
        for s in slots:
            self.ends[s] += t

    def read(self, slots, ends: torch.Tensor, span: int):
        """-> keys, values [B, H, span, Dh] of `slots` (a list, or a tensor [B]) and the absolute
        position each ring index holds [B, span] (-1: empty) for sequences ending at ends [B].
        A view when `slots` is a list of consecutive slots."""
        if isinstance(slots, list) and slots == list(range(slots[0], slots[0] + len(slots))):
            keys, values = self.k[slots[0] : slots[-1] + 1, :, :span], self.v[slots[0] : slots[-1] + 1, :, :span]
        else:
            index = torch.as_tensor(slots, device=self.k.device)
            keys, values = self.k[:, :, :span].index_select(0, index), self.v[:, :, :span].index_select(0, index)
        return keys, values, ring_positions(ends, self.capacity, span)


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
    def ring_attention(q, cache: RingKVCache, slots, starts: torch.Tensor, span: int, slopes, period: int):
        """q [B, H, t, Dh] at positions starts[b].. against ring `slots` (their new keys written)."""
        t = q.shape[2]
        keys, values, k_pos = cache.read(slots, starts + t, span)
        return ragged_attention(q, keys, values, slopes, period, positions(t, starts, q.device), k_pos)

    @staticmethod
    def add_norm(y, residual, norm: nn.LayerNorm):
        return norm(residual + y)

    @staticmethod
    def linear_add_norm(x, linear: nn.Linear, residual, norm: nn.LayerNorm):
        return norm(residual + linear(x))


class PeriodicCausalDecoder(nn.Module):
    """x = LN1(x + SelfAttn(x)); x = LN2(x + Cross(memory)); x = LN3(x + FF(x))."""

    def __init__(self, cfg: DecoderConfig, backend: str = "torch"):
        super().__init__()
        d = cfg.feature_dim
        self.cfg = cfg
        self._slopes = {}  # device -> the ALiBi slopes there
        self.set_backend(backend)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.cross = nn.Linear(d, d)  # out_proj . V of the collapsed cross-attention
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ff1 = nn.Linear(d, cfg.ff_dim)
        self.ff2 = nn.Linear(cfg.ff_dim, d)
        self.norm3 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def set_backend(self, backend: str) -> None:
        """Which implementation runs the fusable steps: "torch" or "triton" (already resolved
        from "auto" by the caller, which knows the device)."""
        if backend == "torch":
            self.ops = TorchOps
        elif backend == "triton":
            from .triton_ops import TritonOps  # imports triton: only once it is asked for

            self.ops = TritonOps
        else:
            raise ValueError(f"unknown decoder backend {backend!r}: choose 'torch' or 'triton'")
        self.backend = backend

    def slopes(self, device) -> torch.Tensor:
        """fp32 [H], made once per device (a host-to-device copy cannot run inside a CUDA graph)."""
        device = torch.device(device)
        if device not in self._slopes:
            self._slopes[device] = torch.tensor(self.cfg.alibi_slopes(), dtype=torch.float32, device=device)
        return self._slopes[device]

    def positional_table(self, x: torch.Tensor) -> torch.Tensor | None:
        """The PPE table [period, D] when the paper's encoding is on, else None."""
        if not self.cfg.ppe:
            return None
        return periodic_positional_encoding(self.cfg.period, x.shape[-1], x.dtype, x.device)

    def project_qkv(self, x: torch.Tensor, offset=0):
        """x [B, T, D] at positions offset.. (an int, or a tensor [B] per sequence) -> (x + PPE,
        the residual stream; q, k, v [B, H, T, Dh])."""
        B, T, D = x.shape
        # the Triton QKV+PPE kernel takes one offset; per-sequence offsets take the PyTorch step
        ops = self.ops if isinstance(offset, int) else TorchOps
        x, qkv = ops.positional_qkv(x, self.qkv, self.positional_table(x), offset)
        q, k, v = qkv.view(B, T, 3, self.cfg.num_heads, -1).permute(2, 0, 3, 1, 4)
        return x, q, k, v

    def finish(self, x: torch.Tensor, attn: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Everything after the self-attention core: out-proj, norms, cross map, feed-forward."""
        B, _, T, _ = attn.shape
        ops = self.ops
        x = ops.add_norm(self.out(attn.transpose(1, 2).reshape(B, T, -1)), x, self.norm1)
        x = ops.linear_add_norm(memory, self.cross, x, self.norm2)
        return ops.add_norm(self.ff2(F.relu(self.ff1(x))), x, self.norm3)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x, memory [B, T, D] -> [B, T, D]. Causal, so frames past a sequence's end in a
        padded batch never influence its valid frames."""
        x, q, k, v = self.project_qkv(x)
        attn = self.ops.attention(q, k, v, self.slopes(x.device), self.cfg.period)
        return self.finish(x, attn, memory)

    def new_cache(self, slots: int, capacity: int, device=None, dtype=None) -> RingKVCache:
        """A ring KV cache for `slots` sequences of up to `capacity` frames of history."""
        return RingKVCache(slots, self.cfg.num_heads, self.cfg.feature_dim // self.cfg.num_heads, capacity,
                           device, dtype)

    def step(self, x: torch.Tensor, memory: torch.Tensor, cache: RingKVCache, slots: list[int]) -> torch.Tensor:
        """Decode the next t frames x, memory [B, t, D] of the sequences in cache `slots` (one
        per row; each at its own position), extending them. The same function as `forward`
        over each whole sequence, frame for frame (within the cache's window)."""
        t = x.shape[1]
        starts = [cache.ends[s] for s in slots]
        span = min(cache.capacity, max(starts) + t)  # only the filled part of the ring is read
        out = self.step_at(x, memory, cache, slots, torch.tensor(starts, device=x.device), span)
        cache.advance(slots, t)
        return out

    def step_at(self, x: torch.Tensor, memory: torch.Tensor, cache: RingKVCache, slots, starts: torch.Tensor,
                span: int) -> torch.Tensor:
        """`step` with every position a tensor: slots (a list or a tensor [B]) and starts [B] on
        x's device, `span` >= every slot's filled length; cache.ends is not advanced. Nothing
        here reads a value back to the host, so a CUDA graph can capture it."""
        x, q, k, v = self.project_qkv(x, starts)
        cache.write(torch.as_tensor(slots, device=x.device), starts, k, v)
        return self.finish(x, self.ops.ring_attention(q, cache, slots, starts, span, self.slopes(x.device),
                                                      self.cfg.period), memory)
