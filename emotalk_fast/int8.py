"""int8 encoder layers for the CPU (opt-in, `int8_encoders=True`, `--int8-encoders`): the wav2vec2
transformers' linear layers (about 80 % of a release-size hop on a CPU) as int8 GEMMs.

Weights are rounded to int8 once, one scale per output channel; activations are rounded at run
time, one scale per row (symmetric, dynamic); `torch._int_mm` multiplies them with int32
accumulation and the product is scaled back to float32. It changes the output: on random
weights every rounding shows, on a trained model much less (docs/performance.md has both). The
CNN front ends, the decoder and the heads stay float32.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .errors import InvalidInput

_QMAX = 127.0


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights (per output channel) and int8 activations (per row)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-12) / _QMAX
        q = torch.round(w / scale[:, None]).clamp(-_QMAX, _QMAX).to(torch.int8)
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
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        raise InvalidInput(f"int8 encoders run on the CPU in float32, not on {p.device} in "
                           f"{str(p.dtype).replace('torch.', '')}")
    if not hasattr(torch, "_int_mm"):
        raise InvalidInput(f"int8 encoders need torch._int_mm, which torch {torch.__version__} lacks")
    count = 0
    for encoder in (model.content_encoder, model.emotion_encoder):
        for layer in encoder.layers:
            for name, child in list(layer.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(layer, name, Int8Linear(child))
                    count += 1
    return count
