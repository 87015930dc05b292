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
from .kernels.reference import periodic_alibi_bias, periodic_positional_encoding

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


class KVCache:
    """Keys and values of the frames decoded so far, [B, H, frames, Dh], grown by doubling.

    With `max_frames`, the oldest frames are dropped past that many (a sliding window that
    bounds memory for endless streams); `start` is the absolute position of the first kept one.
    """

    def __init__(self, max_frames: int | None = None):
        self.max_frames = max_frames
        self.k = self.v = None
        self.start = 0  # absolute frame index of slot 0
        self.length = 0  # filled slots

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        t = k.shape[2]
        if self.k is None or self.length + t > self.k.shape[2]:
            self._grow(k, self.length + t)
        self.k[:, :, self.length : self.length + t] = k
        self.v[:, :, self.length : self.length + t] = v
        self.length += t
        if self.max_frames is not None and self.length > self.max_frames:
            drop = self.length - self.max_frames
            self.k[:, :, : self.max_frames] = self.k[:, :, drop : self.length].clone()
            self.v[:, :, : self.max_frames] = self.v[:, :, drop : self.length].clone()
            self.length, self.start = self.max_frames, self.start + drop

    def _grow(self, like: torch.Tensor, needed: int) -> None:
        cap = max(64, 2 * needed)
        if self.max_frames is not None:
            cap = min(cap, self.max_frames + like.shape[2])
        k = like.new_empty(*like.shape[:2], cap, like.shape[3])
        v = like.new_empty(*like.shape[:2], cap, like.shape[3])
        if self.k is not None:
            k[:, :, : self.length] = self.k[:, :, : self.length]
            v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = k, v

    @property
    def end(self) -> int:
        """Absolute position of the next frame."""
        return self.start + self.length

    def keys_values(self):
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class TorchOps:
    """The decoder's fusable steps in PyTorch: the reference numerics, and the CPU path."""

    @staticmethod
    def positional_qkv(x, qkv: nn.Linear, pe, offset: int):
        """-> (x + pe[(t + offset) mod period], its packed q/k/v projection); pe None: no PPE."""
        if pe is not None:
            x = x + pe[(torch.arange(x.shape[1], device=x.device) + offset) % pe.shape[0]]
        return x, qkv(x)

    attention = staticmethod(attention_with_periodic_bias)

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
        return torch.tensor(self.cfg.alibi_slopes(), dtype=torch.float32, device=device)

    def positional_table(self, x: torch.Tensor) -> torch.Tensor | None:
        """The PPE table [period, D] when the paper's encoding is on, else None."""
        if not self.cfg.ppe:
            return None
        return periodic_positional_encoding(self.cfg.period, x.shape[-1], x.dtype, x.device)

    def project_qkv(self, x: torch.Tensor, offset: int = 0):
        """x [B, T, D] at positions offset.. -> (x + PPE, the residual stream; q, k, v [B, H, T, Dh])."""
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

    def step(self, x: torch.Tensor, memory: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Decode the next frames x, memory [B, t, D] after those in `cache` (which this
        extends). The same function as `forward` over the whole sequence, frame for frame."""
        x, q, k, v = self.project_qkv(x, offset=cache.end)
        cache.append(k, v)
        keys, values = cache.keys_values()
        # positions relative to the first cached frame: the bias depends on i - j only
        attn = self.ops.attention(q, keys, values, self.slopes(x.device), self.cfg.period,
                                  offset=cache.length - x.shape[1])
        return self.finish(x, attn, memory)
