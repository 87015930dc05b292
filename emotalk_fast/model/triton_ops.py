"""The decoder's fusable steps on the Triton kernels: the same signatures and the same function
as `ops.TorchOps`, rounding aside (its PyTorch steps where a kernel has a limit).
Importing this module imports triton, so the decoder imports it only when its backend is "triton".
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .ops import TorchOps
from ..kernels.add_layer_norm import add_layer_norm
from ..kernels.linear_add_layer_norm import linear_add_layer_norm
from ..kernels.periodic_alibi_attention import periodic_alibi_attention
from ..kernels.periodic_alibi_decode import MAX_QUERIES, periodic_alibi_decode
from ..kernels.qkv_ppe import qkv_ppe


class TritonOps(TorchOps):
    @staticmethod
    def positional_qkv(x, qkv: nn.Linear, pe, offset: int):
        """-> (x + pe[(t + offset) mod period], its packed q/k/v projection); pe None: no PPE."""
        if not isinstance(offset, int):  # the QKV+PPE kernel takes one offset, not one per sequence
            return TorchOps.positional_qkv(x, qkv, pe, offset)
        if pe is None:
            return x, qkv(x)  # a plain GEMM: cuBLAS
        out = qkv_ppe(x, qkv.weight, qkv.bias, pe, offset)  # the PPE add rides on the GEMM's loads
        # FaceFormer adds the encoding to the decoder input itself, so the residual carries it too
        rows = (torch.arange(x.shape[1], device=x.device) + offset) % pe.shape[0]
        return x + pe[rows], out

    @staticmethod
    def attention(q, k, v, slopes, period: int, offset: int = 0):
        """q [B, H, Tq, Dh] at positions offset.., k, v [B, H, offset + Tq, Dh] at 0.."""
        return periodic_alibi_attention(q, k, v, slopes, period, offset=offset)

    @staticmethod
    def ring_attention(q, cache, slots, starts, span: int, slopes, period: int):
        """A streaming step: split-K over each row's ring, positions read on the device."""
        if q.shape[2] > MAX_QUERIES:
            return TorchOps.ring_attention(q, cache, slots, starts, span, slopes, period)  # too many queries
        return periodic_alibi_decode(q, cache.k, cache.v, slopes, period, starts,
                                     slots=torch.as_tensor(slots, device=q.device), span=span)

    @staticmethod
    def add_norm(y, residual, norm: nn.LayerNorm):
        return add_layer_norm(y, residual, norm.weight, norm.bias, norm.eps)

    @staticmethod
    def linear_add_norm(x, linear: nn.Linear, residual, norm: nn.LayerNorm):
        return linear_add_layer_norm(x, linear.weight, linear.bias, residual, norm.weight, norm.bias, norm.eps)
