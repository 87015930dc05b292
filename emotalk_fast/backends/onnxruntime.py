"""The incremental encoders in ONNX Runtime (`encoders="onnx"`, `--encoders onnx`,
OnnxRuntimeBackend; CPU, float32; streaming with incremental encoding only, eagerly): a batch of
hops' new rows through both wav2vec2 encoders, over the streams' kept keys and values, as one
run of an exported graph; the decoder, the emotion policy and the engine stay in PyTorch. On a
2-core CPU ONNX Runtime runs a live hop's encoders faster than PyTorch (docs/performance.md).

The graph is `incremental.encode_hop`, the PyTorch encoder's own function, with the streams'
rings as inputs, exported once per model and pair of ring sizes (the contexts) when an engine
first needs it (a minute or more at release size) and kept on disk for later runs
(export_cache.py); tested within 1e-4 of PyTorch. The rings stay the engine's (`EncoderRings`).
ONNX Runtime runs on the cores PyTorch's encoders would take (runtime.threads.encoder_threads).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from ..errors import InvalidInput, install_hint
from ..model.config import FPS
from ..model.emotalk import EmoTalk
from ..streaming.encoders import BRANCHES, HopStates
from ..streaming.grid import StreamGrid
from ..streaming.incremental import EncodedRows, IncrementalEncoder, encode_hop, hop_states
from ..runtime.device import require_cpu_float32
from ..runtime.threads import encoder_threads
from ..export.onnx_export import quiet_export
from ..streaming.backend import Capabilities, EncoderBackend
from .export_cache import ExportCache, weights_digest

HOP_INPUTS = ("wave", "lengths", "index", "i0", "i1", "frac", "kept")  # IncrementalEncoder.batch_inputs'
RING_INPUTS = tuple(f"{b}_{part}" for b in BRANCHES for part in ("keys", "values", "proj"))
INPUTS = HOP_INPUTS + ("hop_frames",) + RING_INPUTS
OUTPUTS = tuple(f"{b}_{part}" for b in BRANCHES for part in ("hidden", "new_keys", "new_values", "new_proj"))
PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the [onnx] extra: the exporter and the runtime
GRAPH = "encoders.onnx"  # its weights beside it, in encoders.onnx.data at release size
GRAPH_FORMAT = 4  # the graph (its inputs, outputs and how it computes): a cached graph of another format is not read
MAX_NEW_FRAMES = FPS * 8  # the longest hop + lookahead a graph takes: 8 s (auto tries up to 3.2 s hops)


class _EncodersGraph(nn.Module):
    """encode_hop over a batch whose rings come in as inputs (each row's own: its slot is its row)."""

    def __init__(self, model: EmoTalk, grid: StreamGrid):
        super().__init__()
        self.model, self.grid = model, grid

    def forward(self, wave, lengths, index, i0, i1, frac, kept, hop_frames, content_keys, content_values,
                content_proj, emotion_keys, emotion_values, emotion_proj):
        rings = {"content": SimpleNamespace(k=content_keys, v=content_values, proj=content_proj, rows=self.grid.context),
                 "emotion": SimpleNamespace(k=emotion_keys, v=emotion_values, proj=emotion_proj,
                                            rows=self.grid.emotion_context)}
        rows = torch.arange(wave.shape[0])
        out = encode_hop(self.model, rings, wave, lengths, index, i0, i1, frac, rows, kept, hop_frames.shape[0])
        return tuple(x for b in BRANCHES for x in (out[b].hidden, out[b].k, out[b].v, out[b].proj))


class OnnxEncoders:
    """A model's incremental encoders exported to ONNX Runtime, one session per pair of ring
    sizes, exported on first use and kept in the export cache (export_cache.py) for later runs."""

    def __init__(self, model: EmoTalk, threads: int | None = None, cache_dir=None):
        require_cpu_float32(model, "ONNX encoders")
        missing = [m for m in PACKAGES if importlib.util.find_spec(m) is None]
        if missing:
            raise InvalidInput(f"the ONNX encoders need {', '.join(missing)}: {install_hint('onnx')}")
        self.model, self.threads = model, threads or encoder_threads()
        self.cache = ExportCache(cache_dir)
        self._sessions: dict[tuple[int, int], object] = {}
        self._weights: str | None = None
        self.loaded_from_cache: bool | None = None  # the last session's export: read from disk, or made now

    def session(self, grid: StreamGrid):
        """The session of a grid's ring sizes (its contexts): any hop of them runs through it."""
        key = (grid.context, grid.emotion_context)
        if key not in self._sessions:
            self._sessions[key] = self._cached(grid)
        return self._sessions[key]

    def cache_key(self, grid: StreamGrid) -> dict:
        """What the graph depends on: the weights, the ring sizes, the versions that write and read it."""
        import onnx
        import onnxruntime
        import onnxscript

        from .. import __version__

        if self._weights is None:  # a few seconds at release size, once
            self._weights = weights_digest(self.model)
        return {"graph": GRAPH_FORMAT, "weights": self._weights, "config": repr(self.model.cfg), "rings": [grid.context, grid.emotion_context],
                "max_new_frames": MAX_NEW_FRAMES, "emotalk_fast": __version__, "torch": torch.__version__,
                "onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}

    def _cached(self, grid: StreamGrid):
        def build(folder: Path) -> None:
            print("emotalk-fast: exporting the incremental encoders to ONNX Runtime (once per model and context, "
                  f"kept in {self.cache.root}; minutes at release size)", file=sys.stderr, flush=True)
            self._export(grid, folder / GRAPH)

        session, cached = self.cache.get("onnx_encoders", self.cache_key(grid), build, self._open)
        self.loaded_from_cache = cached
        return session

    def _open(self, folder: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(folder / GRAPH), options, providers=["CPUExecutionProvider"])

    def _export(self, grid: StreamGrid, path: Path) -> None:
        graph = _EncodersGraph(self.model, grid).eval()
        inputs = _example(self.model, grid)
        dim = torch.export.Dim
        batch, hop = dim("batch", min=1, max=1024), dim("hop_frames", min=1, max=MAX_NEW_FRAMES)
        new = dim("new_frames", min=1, max=MAX_NEW_FRAMES)
        field = self.model.cfg.content.receptive_field
        window, segment = dim("window", min=field, max=1 << 22), dim("segment", min=field, max=1 << 22)
        dynamic = {name: {0: batch} for name in INPUTS}
        dynamic.update(wave={0: batch, 1: window}, index={0: batch, 1: segment}, i0={0: batch, 1: new},
                       i1={0: batch, 1: new}, frac={0: batch, 1: new}, hop_frames={0: hop})
        quiet_export(graph, (), inputs, INPUTS, OUTPUTS, dynamic).save(str(path))


def _example(model: EmoTalk, grid: StreamGrid) -> dict[str, torch.Tensor]:
    """Inputs of two steady hops of the grid in noise, over empty rings (two: a batch of one
    would be traced as a constant)."""
    w = grid.window(grid.steady())
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal((2, w.s1 - w.s0)).astype(np.float32) * 0.1)
    inputs = IncrementalEncoder(model, grid, 2, "cpu", torch.float32).batch_inputs([w, w], list(noise), [w.h0] * 2)
    inputs["hop_frames"] = torch.arange(w.h0, w.h1)
    for b, enc, rows in (("content", model.cfg.content, grid.context), ("emotion", model.cfg.emotion,
                                                                          grid.emotion_context)):
        r = max(rows, 1)
        # separate tensors: an input passed twice would be traced as one
        inputs[f"{b}_keys"], inputs[f"{b}_values"] = (torch.zeros(2, enc.num_layers, r, enc.hidden_size) for _ in "kv")
        inputs[f"{b}_proj"] = torch.zeros(2, r, enc.hidden_size)
    return inputs


class OnnxIncrementalEncoder(IncrementalEncoder):
    """IncrementalEncoder (its inputs, rings, commit and hop contract) with the encoders in ONNX
    Runtime: a batch of hops one run of the session, each row reading its slot's rings."""

    def __init__(self, sessions: OnnxEncoders, grid: StreamGrid, slots: int, device, dtype):
        super().__init__(sessions.model, grid, slots, device, dtype)
        self.session = sessions.session(grid)

    def encode_inputs(self, wave, lengths, index, i0, i1, frac, kept, slots, hop: int,
                      branches=BRANCHES) -> HopStates:
        """As IncrementalEncoder.encode_inputs (both branches always run)."""
        slots = torch.as_tensor(slots)
        feeds = {name: torch.as_tensor(x).numpy() for name, x in zip(HOP_INPUTS, (wave, lengths, index, i0, i1, frac,
                                                                                   kept))}
        feeds["frac"] = feeds["frac"].astype(np.float32)
        feeds["hop_frames"] = np.arange(hop, dtype=np.int64)
        for b in BRANCHES:
            ring = self.rings[b]
            feeds.update({f"{b}_keys": ring.k[slots].numpy(), f"{b}_values": ring.v[slots].numpy(),
                          f"{b}_proj": ring.proj[slots].numpy()})
        out = dict(zip(OUTPUTS, self.session.run(None, feeds)))
        encoded = {b: EncodedRows(*(torch.from_numpy(out[f"{b}_{part}"])
                                    for part in ("hidden", "new_keys", "new_values", "new_proj"))) for b in BRANCHES}
        return hop_states(encoded, hop)


class OnnxRuntimeBackend(EncoderBackend):
    name, title = "onnx", "ONNX"
    capabilities = Capabilities(devices=("cpu",), dtypes=(torch.float32,), encodings=("incremental",),
                                offline=False, static_shapes=False, exports=True,
                                packages=PACKAGES)

    def prepare(self, model):
        self.sessions = OnnxEncoders(model, cache_dir=self.cache_dir)
        return super().prepare(model)  # the decoder stays PyTorch's

    def incremental_encoder(self, model, grid, slots: int, device, dtype):
        return OnnxIncrementalEncoder(self.sessions, grid, slots, device, dtype)

    def threads_note(self) -> str:
        return f"the encoders in ONNX Runtime on {self.sessions.threads}"
