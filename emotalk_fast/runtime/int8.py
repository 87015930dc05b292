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

import copy
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

    def __init__(self, weight_t: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        """weight_t: int8 [in, out] laid out column-major (the layout torch._int_mm's CPU kernel
        is fastest with); weight_scale: float32 [out]; bias: float32 [out] (shared, not copied)."""
        super().__init__()
        self.register_buffer("weight_t", weight_t)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = bias
        self.in_features, self.out_features = weight_t.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear, levels: int = 127) -> "Int8Linear":
        """levels: the largest weight magnitude after rounding (`weight_levels()` for this CPU)."""
        weight_t, scale = quantize_weight(linear.weight, levels)
        return cls(weight_t, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        peak = rows.abs().amax(1, keepdim=True).clamp_(min=1e-12)
        # |rows| <= peak: the rounded values lie in [-127, 127] without a clamp
        q = (rows * (_QMAX / peak)).round_().to(torch.int8)
        y = torch._int_mm(q, self.weight_t).float().mul_(self.weight_scale).mul_(peak / _QMAX)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_weight(weight: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A float weight [out, in] -> (int8 [in, out] column-major, float32 scale [out]): one scale
    per output channel, the largest magnitude rounded to `levels`."""
    w = weight.detach().float()
    scale = w.abs().amax(1).clamp(min=1e-12) / levels
    q = torch.round(w / scale[:, None]).clamp_(-levels, levels).to(torch.int8)
    return q.contiguous().t(), scale  # [out, in] row-major whatever the float weight's layout


def encoder_linears(model) -> dict[str, nn.Linear]:
    """The linear layers int8 encoders replace, by their name in the model: every linear layer of
    both encoders' transformer layers (most of a hop's weights)."""
    return {f"{branch}.layers.{i}.{name}": child
            for branch, encoder in (("content_encoder", model.content_encoder), ("emotion_encoder", model.emotion_encoder))
            for i, layer in enumerate(encoder.layers)
            for name, child in layer.named_children() if isinstance(child, nn.Linear)}


def quantize_encoders(model) -> dict[str, torch.Tensor]:
    """The int8 weights of `encoder_linears(model)` -> {name.weight_t, name.weight_scale}: what
    `int8_view` reads. CPU and float32 only (it is a CPU speed-up; GPUs have bfloat16)."""
    require_cpu_float32(model, "int8 encoders")
    if not hasattr(torch, "_int_mm"):
        raise InvalidInput(f"int8 encoders need torch._int_mm, which torch {torch.__version__} lacks")
    levels, state = weight_levels(), {}
    for name, linear in encoder_linears(model).items():
        state[f"{name}.weight_t"], state[f"{name}.weight_scale"] = quantize_weight(linear.weight, levels)
    return state


def int8_view(model, state: dict[str, torch.Tensor]):
    """A copy of `model` that shares every tensor of it, with `encoder_linears` replaced by
    Int8Linear layers of `state` (`quantize_encoders`' output): the model itself is unchanged."""
    linears = encoder_linears(model)
    missing = [n for n in linears if f"{n}.weight_t" not in state or f"{n}.weight_scale" not in state]
    if missing:
        raise ValueError(f"the int8 weights lack {missing[0]} (and {len(missing) - 1} more)")
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    shared.update({id(m): Int8Linear(state[f"{n}.weight_t"], state[f"{n}.weight_scale"], m.bias)
                   for n, m in linears.items()})
    return copy.deepcopy(model, shared)  # the memo: these objects are taken as they are, not copied
