"""EmoTalk's decoder: one post-norm transformer layer with a periodic ALiBi-style causal bias.

Self-attention bias for head h, query frame i, key frame j <= i:
    -slope_h * floor((i - j) / period)
computed in closed form per block of queries, so memory stays linear in the length and there
is no length cap (the release precomputes a 5000 x 5000 table). The cross-attention's memory
mask lets frame i see only memory frame i, so its softmax is exactly 1 and the block reduces
to one linear map, `cross` = out_proj(V(.)), folded at load time.

The layer is written once over four fusable steps (ops.TorchOps, or
triton_ops.TritonOps on emotalk_fast.kernels); `set_backend` picks the set once.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DecoderConfig
from .ops import TorchOps
from ..errors import InvalidInput
from ..kernels.reference import periodic_positional_encoding, ring_positions


class RingKVCache:
    """Keys and values of many sequences, preallocated once: k, v [slots, H, capacity, Dh].

    Slot s holds the newest `capacity` frames of one sequence; absolute position p lives at
    ring index p % capacity, so a step writes only its new frames (nothing grows, nothing old
    is copied) and frames older than `capacity` are overwritten: a sliding window that bounds
    memory for endless streams. The cache holds buffers only: each sequence's position is its
    owner's, passed in as tensors (gpt-fast's `input_pos`), so a captured step needs no host
    value, and a slot's stale frames are masked by position, never read.
    """

    def __init__(self, slots: int, num_heads: int, head_dim: int, capacity: int, device=None, dtype=None):
        if slots < 1 or capacity < 1:
            raise InvalidInput(f"a KV cache needs >= 1 slot and >= 1 frame, got {slots}, {capacity}")
        shape = (slots, num_heads, capacity, head_dim)
        self.k, self.v = _lazy_zeros(shape, device, dtype), _lazy_zeros(shape, device, dtype)
        self.capacity = capacity

    def write(self, slots: torch.Tensor, starts: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, t, Dh] at positions starts[b].. of slots[b] (tensors [B])."""
        t = k.shape[2]
        if t > self.capacity:
            raise InvalidInput(f"{t} new frames do not fit a cache of {self.capacity}")
        rows = torch.remainder(starts[:, None] + torch.arange(t, device=starts.device), self.capacity)
        # advanced indices on dims 0 and 2 around a slice: the selection is [B, t, H, Dh]
        self.k[slots[:, None], :, rows] = k.transpose(1, 2).to(self.k.dtype)
        self.v[slots[:, None], :, rows] = v.transpose(1, 2).to(self.v.dtype)

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


def _lazy_zeros(shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """Zeros that cost no memory on the CPU until written: a ring sized for 600 s of 16 streams is
    ~1.8 GB, mostly never reached. torch.zeros writes every page at once; numpy's zeros come
    from calloc, whose large blocks are fresh pages the kernel maps (zeroed) on first touch."""
    device = torch.device("cpu" if device is None else device)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if device.type != "cpu":
        return torch.zeros(shape, device=device, dtype=dtype)
    raw = np.zeros(math.prod(shape) * dtype.itemsize, np.uint8)
    return torch.from_numpy(raw).view(dtype).view(shape)


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
            raise InvalidInput(f"unknown decoder backend {backend!r}: choose 'torch' or 'triton'")
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
        x, qkv = self.ops.positional_qkv(x, self.qkv, self.positional_table(x), offset)
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

    def step_at(self, x: torch.Tensor, memory: torch.Tensor, cache: RingKVCache, slots, starts: torch.Tensor,
                span: int) -> torch.Tensor:
        """Decode the next t frames x, memory [B, t, D] of the sequences in cache `slots` (a list
        or a tensor [B]; one per row), each at its own position starts [B] (a tensor on x's
        device), writing their keys and values. `span` >= every slot's filled length after the
        step (only that part of the ring is read). The same function as `forward` over each
        whole sequence, frame for frame (within the cache's window). Nothing here reads a value
        back to the host, so a CUDA graph can capture it."""
        x, q, k, v = self.project_qkv(x, starts)
        cache.write(torch.as_tensor(slots, device=x.device), starts, k, v)
        return self.finish(x, self.ops.ring_attention(q, cache, slots, starts, span, self.slopes(x.device),
                                                      self.cfg.period), memory)
