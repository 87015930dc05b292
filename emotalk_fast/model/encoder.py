"""A lean wav2vec2-large ('stable layer norm') encoder: CNN front end, projection, transformer.

The module names are this library's own; checkpoint.py maps the release's keys onto them
(q/k/v packed into one projection, the positional convolution's weight norm folded).
Attention goes through `F.scaled_dot_product_attention`, so no T x T map is ever kept.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import EncoderConfig


# Output frames per piece of the CNN front end (2 s at 50 Hz): its temporaries stay a few MB,
# reused from piece to piece, instead of hundreds of MB that are page-faulted in on every call
# (faster on a CPU: docs/performance.md). Exact: every frame sees exactly the samples it saw
# before (only the GEMM's blocking, hence float rounding, can differ with the row count: ~1e-6).
FRONT_END_PIECE_FRAMES = 100


class ConvFrontEnd(nn.Module):
    """7 x [Conv1d -> LayerNorm over channels -> GELU]: waveform [B, N] -> features [B, L, C]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.hop = math.prod(cfg.conv_stride)  # samples between output frames (320)
        in_dims = (1,) + cfg.conv_dim[:-1]
        self.convs = nn.ModuleList(
            nn.Conv1d(i, o, k, stride=s, bias=cfg.conv_bias)
            for i, o, k, s in zip(in_dims, cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(o, eps=cfg.layer_norm_eps) for o in cfg.conv_dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        frames = self.cfg.num_cnn_frames(wave.shape[1])
        if frames <= FRONT_END_PIECE_FRAMES:
            return self._layers(wave)
        # Output frame j reads samples [hop * j, hop * j + field): a piece of frames [j0, j1)
        # is the front end of its own samples, since every layer's grid starts on j0's sample.
        field = self.cfg.receptive_field
        pieces = [self._layers(wave[:, self.hop * j0 : self.hop * (min(j0 + FRONT_END_PIECE_FRAMES, frames) - 1) + field])
                  for j0 in range(0, frames, FRONT_END_PIECE_FRAMES)]
        return torch.cat(pieces, dim=1)

    def _layers(self, wave: torch.Tensor) -> torch.Tensor:
        # Channels-last throughout: each conv is one GEMM over its unfolded windows and the
        # LayerNorm needs no transposes (Conv1d's [B, C, L] layout cost ~4 copies per layer).
        x = wave[:, :, None]
        for conv, norm in zip(self.convs, self.norms):
            windows = x.unfold(1, conv.kernel_size[0], conv.stride[0]).flatten(2)  # [B, L, C_in * k]
            x = F.gelu(norm(F.linear(windows, conv.weight.flatten(1), conv.bias)))
        return x


class EncoderLayer(nn.Module):
    """Pre-norm layer: h += Attn(LN(h)); h += FF(LN(h))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ff1 = nn.Linear(d, cfg.intermediate_size)
        self.ff2 = nn.Linear(cfg.intermediate_size, d)

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, T, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        h = h + self.out(a.transpose(1, 2).reshape(B, T, D))
        return h + self.ff2(F.gelu(self.ff1(self.norm2(h))))


class Wav2Vec2Encoder(nn.Module):
    """wav2vec2 encoder split in two halves, because EmoTalk resamples in between:
    `front_end` (50 Hz CNN features) and `transformer` (features at any frame rate -> hidden).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.cfg = cfg
        self.front_end = ConvFrontEnd(cfg)
        self.proj_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.proj = nn.Linear(cfg.conv_dim[-1], d)
        # Weight norm is folded at load time: this holds g * v / ||v||.
        self.pos_conv = nn.Conv1d(d, d, cfg.num_pos_conv_taps, padding=cfg.num_pos_conv_taps // 2,
                                  groups=cfg.num_pos_conv_groups)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        if cfg.num_labels:
            self.cls_dense = nn.Linear(d, d)
            self.cls_out = nn.Linear(d, cfg.num_labels)

    def transformer(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """CNN features [B, T, C] (any frame rate) -> hidden states [B, T, hidden].

        `lengths` [B] marks valid frames of a padded batch: padded frames are zeroed before the
        positional convolution (as if the sequence ended there) and hidden from attention.
        """
        h = self.proj(self.proj_norm(feats))
        key_mask = None
        if lengths is not None:
            valid = torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]
            h = h * valid[..., None].to(h.dtype)
            key_mask = valid[:, None, None, :]
        pos = self.pos_conv(h.transpose(1, 2))
        if self.cfg.num_pos_conv_taps % 2 == 0:
            pos = pos[..., :-1]  # an even tap count yields one extra step
        h = h + F.gelu(pos).transpose(1, 2)
        for layer in self.layers:
            h = layer(h, key_mask)
        return self.final_norm(h)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Classification head on mean-pooled hidden states [B, hidden] -> logits [B, labels]."""
        return self.cls_out(torch.tanh(self.cls_dense(pooled)))
