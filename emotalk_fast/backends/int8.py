"""int8 encoders (`--encoders int8`; one of `--encoders auto`'s candidates): the transformer
layers' linear layers as int8 GEMMs (runtime/int8.py: weights per output channel, activations per
row), in a view of the model that shares every other tensor with it; CPU, float32. The output
moves, within the tolerance docs/performance.md measures.

The int8 weights are rounded once per model and CPU kind and kept on disk (export_cache.py), so a
later start reads them instead of rounding 2.4 GB of float32 weights again."""
from __future__ import annotations

from pathlib import Path

import torch

from ..runtime.int8 import int8_view, quantize_encoders, weight_levels
from ..streaming.backend import Capabilities, EncoderBackend
from .export_cache import ExportCache, weights_digest

FORMAT = 2  # the cached weights' names and layout: another format is not read
FILE = "int8_encoders.pt"


class Int8Backend(EncoderBackend):
    name, title = "int8", "int8"
    capabilities = Capabilities(devices=("cpu",), dtypes=(torch.float32,), exact=False, tolerated=True,
                                exports=True)

    def prepare(self, model):
        """The model (its float weights laid out as PyTorch's backend lays them) -> a view of it
        with int8 encoder layers, from the cache or rounded now."""
        model = super().prepare(model)
        state, self.loaded_from_cache = ExportCache(self.cache_dir).get(
            "int8_encoders", self.cache_key(model), lambda folder: torch.save(quantize_encoders(model), folder / FILE),
            lambda folder: torch.load(Path(folder) / FILE, weights_only=True, mmap=True))
        return int8_view(model, state)

    @staticmethod
    def cache_key(model) -> dict:
        """What the int8 weights depend on: the weights, this CPU's weight levels, the versions."""
        from .. import __version__

        return {"format": FORMAT, "weights": weights_digest(model), "levels": weight_levels(),
                "emotalk_fast": __version__, "torch": torch.__version__}
