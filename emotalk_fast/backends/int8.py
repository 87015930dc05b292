"""int8 encoders (opt-in, `--encoders int8`): the transformer layers' linear layers as int8 GEMMs
(runtime/int8.py), swapped in place once; CPU, float32; the output moves (docs/performance.md)."""
from __future__ import annotations

import torch

from ..runtime.int8 import quantize_encoders
from ..streaming.backend import Capabilities, EncoderBackend


class Int8Backend(EncoderBackend):
    name, title = "int8", "int8"
    capabilities = Capabilities(devices=("cpu",), dtypes=(torch.float32,), exact=False, shares_model=False)

    def prepare(self, model) -> None:
        quantize_encoders(model)
