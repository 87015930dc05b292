"""PyTorch's encoders, the model's own (the default, `--encoders torch`): any device and dtype,
both stream encodings, static shapes for CUDA graphs."""
from __future__ import annotations

from ..streaming.backend import EncoderBackend


class TorchBackend(EncoderBackend):
    """streaming.backend.EncoderBackend's own defaults: the encoders as the model has them."""
