"""int8 encoder layers for the CPU (opt-in, `encoders="int8"`, `--encoders int8`): the wav2vec2
transformers' linear layers (most of a release-size hop on a CPU: docs/performance.md) as int8 GEMMs.

Weights are rounded to int8 once, one scale per output channel; activations are rounded at run
time, one scale per row (symmetric, dynamic); `torch._int_mm` multiplies them with int32
accumulation and the product is scaled back to float32. It changes the output: on random
weights every rounding shows, on a trained model much less (docs/performance.md has both). The
CNN front ends, the decoder and the heads stay float32.

A CPU without an int8 dot-product instruction (VNNI: most AVX2-only CPUs) multiplies through
16-bit pair sums that saturate when both operands are near full scale; there the weights keep 7
bits (+-63), which cannot saturate (`weight_levels` finds out by measuring the GEMM itself).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn

from ..errors import InvalidInput
from .device import require_cpu_float32

_QMAX = 127.0  # activations, and weights where the GEMM is exact


@lru_cache(maxsize=1)
def weight_levels() -> int:
    """The largest int8 weight this CPU's `torch._int_mm` multiplies exactly by any activation:
    127, or 63 where its kernel saturates 16-bit pair sums (u8 x s8 pairs without VNNI: oneDNN
    on AVX2, or capped at AVX2 by ONEDNN_MAX_CPU_ISA), found by comparing one full-scale GEMM
    with exact integer arithmetic. Where it saturates, 8-bit weights move the hidden states many
    times further than the rounding itself (docs/performance.md)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (32, 1024), dtype=torch.int8, generator=g)
    x[:, :64] = 127  # pairs of full-scale products: past int16 in a saturating kernel
    w = torch.randint(-127, 128, (1024, 64), dtype=torch.int8, generator=g)
    w[:64] = 127
    exact = x.double() @ w.double()  # integers below 2^53: exact
    return 127 if torch.equal(torch._int_mm(x, w).double(), exact) else 63


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights (per output channel) and int8 activations (per row)."""

    def __init__(self, linear: nn.Linear, levels: int = 127):
        """levels: the largest weight magnitude after rounding (`weight_levels()` for this CPU)."""
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-12) / levels
        q = torch.round(w / scale[:, None]).clamp(-levels, levels).to(torch.int8)
        # [in, out] laid out column-major: the layout torch._int_mm's CPU kernel is fastest with
        self.register_buffer("weight_t", q.t())
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(1, keepdim=True).clamp(min=1e-12) / _QMAX
        q = torch.round(rows / scale).clamp(-_QMAX, _QMAX).to(torch.int8)
        y = torch._int_mm(q, self.weight_t).float() * (scale * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_encoders(model) -> int:
    """Replace every linear layer of both encoders' transformer layers with an Int8Linear, in
    place -> how many. CPU and float32 only (it is a CPU speed-up; GPUs have bfloat16)."""
    require_cpu_float32(model, "int8 encoders")
    if not hasattr(torch, "_int_mm"):
        raise InvalidInput(f"int8 encoders need torch._int_mm, which torch {torch.__version__} lacks")
    count, levels = 0, weight_levels()
    for encoder in (model.content_encoder, model.emotion_encoder):
        for layer in encoder.layers:
            for name, child in list(layer.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(layer, name, Int8Linear(child, levels))
                    count += 1
    return count
