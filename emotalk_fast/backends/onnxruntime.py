"""The incremental encoders in ONNX Runtime (`encoders="onnx"`, `--encoders onnx`,
OnnxRuntimeBackend; CPU, float32; streaming with incremental encoding only, eagerly): each hop's new rows through both wav2vec2 encoders,
over a stream's kept keys and values, as one exported graph per stream and hop; the decoder,
the emotion policy and the engine stay in PyTorch. On a 2-core CPU ONNX Runtime runs a live hop's
encoders faster than PyTorch (docs/performance.md).

The graph is `onnx_stream.encode_new_rows`, exported once per model and pair of ring sizes (the
contexts) when an engine first needs it (a minute or more at release size) and kept on disk for
later runs (export_cache.py), with the same arithmetic as the PyTorch incremental encoder
(tested within 1e-4). Streams run one by one through it; their rings
stay the engine's (`EncoderRings`). ONNX Runtime runs on torch's thread count (--threads).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import InvalidInput
from ..model.config import FPS
from ..model.emotalk import EmoTalk
from ..streaming.encoders import BRANCHES, HopStates
from ..streaming.grid import StreamGrid, Window
from ..streaming.incremental import EncodedRows, IncrementalEncoder, hop_states
from ..runtime.device import require_cpu_float32
from ..export.onnx_export import quiet_export
from ..export.onnx_stream import encode_new_rows, hop_inputs
from ..streaming.backend import Capabilities, EncoderBackend
from .export_cache import ExportCache, weights_digest

RING_INPUTS = tuple(f"{b}_{part}" for b in BRANCHES for part in ("keys", "values", "proj"))
INPUTS = ("window", "segment", "first_cnn_frame", "new_frames", "hop_frames", "kept") + RING_INPUTS
OUTPUTS = tuple(f"{b}_{part}" for b in BRANCHES for part in ("hidden", "new_keys", "new_values", "new_proj"))
GRAPH = "encoders.onnx"  # its weights beside it, in encoders.onnx.data at release size
MAX_NEW_FRAMES = FPS * 8  # the longest hop + lookahead a graph takes: 8 s (auto tries up to 3.2 s hops)


class _EncodersGraph(nn.Module):
    def __init__(self, model: EmoTalk, grid: StreamGrid):
        super().__init__()
        self.model, self.grid = model, grid

    def forward(self, window, segment, first_cnn_frame, new_frames, hop_frames, kept, content_keys, content_values,
                content_proj, emotion_keys, emotion_values, emotion_proj):
        rings = {"content": (content_keys, content_values, content_proj, self.grid.context),
                 "emotion": (emotion_keys, emotion_values, emotion_proj, self.grid.emotion_context)}
        out = encode_new_rows(self.model, self.grid, rings, window, segment, first_cnn_frame, new_frames, kept,
                              hop_frames.shape[0])
        return tuple(x for b in BRANCHES for x in (out[b].hidden[0], out[b].k[0], out[b].v[0], out[b].proj[0]))


class OnnxEncoders:
    """A model's incremental encoders exported to ONNX Runtime, one session per pair of ring
    sizes, exported on first use and kept in the export cache (export_cache.py) for later runs."""

    def __init__(self, model: EmoTalk, threads: int | None = None, cache_dir=None):
        require_cpu_float32(model, "ONNX encoders")
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise InvalidInput(f"the ONNX encoders need {', '.join(missing)}: pip install 'emotalk-fast[onnx]'")
        self.model, self.threads = model, threads or torch.get_num_threads()
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
        return {"weights": self._weights, "config": repr(self.model.cfg), "rings": [grid.context, grid.emotion_context],
                "max_new_frames": MAX_NEW_FRAMES, "emotalk_fast": __version__, "torch": torch.__version__,
                "onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}

    def _cached(self, grid: StreamGrid):
        def build(folder: Path) -> None:
            print("emotalk-fast: exporting the incremental encoders to ONNX Runtime (once per model and context, "
                  f"kept in {self.cache.root}; about 90 s at release size)", file=sys.stderr, flush=True)
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
        cfg = self.model.cfg
        graph = _EncodersGraph(self.model, grid).eval()
        inputs = _example(cfg, grid)
        dim = torch.export.Dim
        new, hop = dim("new_frames", min=1, max=MAX_NEW_FRAMES), dim("hop_frames", min=1, max=MAX_NEW_FRAMES)
        field = cfg.content.receptive_field
        dynamic = {name: None for name in INPUTS}
        dynamic.update(window={1: dim("window", min=field, max=1 << 22)},
                       segment={1: dim("segment", min=field, max=1 << 22)}, new_frames={0: new},
                       hop_frames={0: hop})
        quiet_export(graph, (), inputs, INPUTS, OUTPUTS, dynamic).save(str(path))


def _example(cfg, grid: StreamGrid) -> dict[str, torch.Tensor]:
    """Inputs of a steady hop of the grid in noise, over empty rings."""
    w = grid.window(grid.steady())
    noise = np.random.default_rng(0).standard_normal((1, w.s1 - w.s0)).astype(np.float32) * 0.1
    inputs = hop_inputs(grid, w, torch.from_numpy(noise), w.h0)
    for b, enc, rows in (("content", cfg.content, grid.context), ("emotion", cfg.emotion, grid.emotion_context)):
        r = max(rows, 1)
        # separate tensors: an input passed twice would be traced as one
        inputs[f"{b}_keys"], inputs[f"{b}_values"] = (torch.zeros(enc.num_layers, r, enc.hidden_size) for _ in "kv")
        inputs[f"{b}_proj"] = torch.zeros(r, enc.hidden_size)
    return inputs


class OnnxIncrementalEncoder(IncrementalEncoder):
    """IncrementalEncoder (its rings, commit and hop contract) with the encoders in ONNX Runtime:
    each stream's hop one run of the session, over its own slot of the rings."""

    def __init__(self, sessions: OnnxEncoders, grid: StreamGrid, slots: int, device, dtype):
        super().__init__(sessions.model, grid, slots, device, dtype)
        self.session = sessions.session(grid)

    def batch_inputs(self, windows: list[Window], samples: list[torch.Tensor], kept: list[int] | None = None,
                     pad_to: tuple | None = None) -> dict:
        """Each stream's graph inputs (numpy), run one by one (no static shapes)."""
        return dict(feeds=[{k: v.numpy() for k, v in hop_inputs(self.grid, w, x.cpu()[None].float(), k).items()}
                           for w, x, k in zip(windows, samples, kept or [0] * len(windows))])

    def encode_inputs(self, feeds: list[dict], slots, hop: int, branches=BRANCHES) -> HopStates:
        """As IncrementalEncoder.encode_inputs (both branches always run)."""
        rows = []
        for f, slot in zip(feeds, torch.as_tensor(slots).tolist()):
            for b in BRANCHES:
                ring = self.rings[b]
                f = dict(f, **{f"{b}_keys": ring.k[slot].numpy(), f"{b}_values": ring.v[slot].numpy(),
                               f"{b}_proj": ring.proj[slot].numpy()})
            rows.append(dict(zip(OUTPUTS, self.session.run(None, f))))
        encoded = {b: EncodedRows(*(torch.from_numpy(np.stack([r[f"{b}_{part}"] for r in rows]))
                                    for part in ("hidden", "new_keys", "new_values", "new_proj")))
                   for b in BRANCHES}
        return hop_states(encoded, hop)


class OnnxRuntimeBackend(EncoderBackend):
    name, title = "onnx", "ONNX"
    capabilities = Capabilities(devices=("cpu",), dtypes=(torch.float32,), encodings=("incremental",),
                                offline=False, static_shapes=False, exports=True,
                                packages=("onnx", "onnxscript", "onnxruntime"))

    def prepare(self, model) -> None:
        self.sessions = OnnxEncoders(model, cache_dir=self.cache_dir)

    def incremental_encoder(self, model, grid, slots: int, device, dtype):
        return OnnxIncrementalEncoder(self.sessions, grid, slots, device, dtype)

    def threads_note(self) -> str:
        return f"the encoders in ONNX Runtime on {self.sessions.threads}"
