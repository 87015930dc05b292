"""The incremental encoders in ONNX Runtime (`encoders="onnx"`, `--encoders onnx`,
OnnxRuntimeBackend; CPU, float32; streaming with incremental encoding only, eagerly): each hop's new rows through both wav2vec2 encoders,
over a stream's kept keys and values, as one exported graph per stream and hop; the decoder,
the emotion policy and the engine stay in PyTorch. On a 2-core CPU ONNX Runtime runs a live hop's
encoders faster than PyTorch (docs/performance.md).

The graph is `onnx_stream.encode_new_rows`, exported once per pair of ring sizes (the contexts)
when an engine first needs it (a minute or more at release size), with the same arithmetic as the
PyTorch incremental encoder (tested within 1e-4). Streams run one by one through it; their rings
stay the engine's (`EncoderRings`). ONNX Runtime runs on torch's thread count (--threads).
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import InvalidInput
from ..model.config import ENCODER_FPS, FPS, SAMPLE_RATE
from ..model.emotalk import EmoTalk
from ..streaming.grid import StreamGrid, Window, cnn_frame
from ..streaming.incremental import EncodedRows, EncoderRings
from ..runtime.device import require_cpu_float32
from ..export.onnx_export import quiet_export
from ..export.onnx_stream import encode_new_rows
from ..streaming.backend import Capabilities, EncoderBackend

BRANCHES = ("content", "emotion")
RING_INPUTS = tuple(f"{b}_{part}" for b in BRANCHES for part in ("keys", "values", "proj"))
INPUTS = ("window", "segment", "first_cnn_frame", "new_frames", "hop_frames", "kept") + RING_INPUTS
OUTPUTS = tuple(f"{b}_{part}" for b in BRANCHES for part in ("hidden", "new_keys", "new_values", "new_proj"))
STRIDE = SAMPLE_RATE // ENCODER_FPS  # samples per CNN frame
MAX_NEW_FRAMES = FPS * 8  # the longest hop + lookahead a graph takes: 8 s (auto tries up to 3.2 s hops)


class _EncodersGraph(nn.Module):
    def __init__(self, model: EmoTalk, rows: dict[str, int]):
        super().__init__()
        self.model, self.rows = model, rows

    def forward(self, window, segment, first_cnn_frame, new_frames, hop_frames, kept, content_keys, content_values,
                content_proj, emotion_keys, emotion_values, emotion_proj):
        rings = {"content": (content_keys, content_values, content_proj, self.rows["content"]),
                 "emotion": (emotion_keys, emotion_values, emotion_proj, self.rows["emotion"])}
        out = encode_new_rows(self.model, rings, window, segment, first_cnn_frame, new_frames, kept,
                              hop_frames.shape[0])
        return tuple(x for b in BRANCHES for x in (out[b].hidden[0], out[b].k[0], out[b].v[0], out[b].proj[0]))


class OnnxEncoders:
    """A model's incremental encoders exported to ONNX Runtime, one session per pair of ring
    sizes, exported on first use."""

    def __init__(self, model: EmoTalk, threads: int | None = None):
        require_cpu_float32(model, "ONNX encoders")
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise InvalidInput(f"the ONNX encoders need {', '.join(missing)}: pip install 'emotalk-fast[onnx]'")
        self.model, self.threads = model, threads or torch.get_num_threads()
        self._sessions: dict[tuple[int, int], object] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="emotalk_onnx_encoders_")

    def session(self, rows: dict[str, int]):
        key = (rows["content"], rows["emotion"])
        if key not in self._sessions:
            self._sessions[key] = self._export(rows)
        return self._sessions[key]

    def _export(self, rows: dict[str, int]):
        import onnxruntime as ort

        cfg = self.model.cfg
        print("emotalk-fast: exporting the incremental encoders to ONNX Runtime (once per context; "
              "about 90 s at release size)", file=sys.stderr, flush=True)
        graph = _EncodersGraph(self.model, rows).eval()
        inputs = _example(cfg, rows)
        dim = torch.export.Dim
        new, hop = dim("new_frames", min=1, max=MAX_NEW_FRAMES), dim("hop_frames", min=1, max=MAX_NEW_FRAMES)
        field = cfg.content.receptive_field
        dynamic = {name: None for name in INPUTS}
        dynamic.update(window={1: dim("window", min=field, max=1 << 22)},
                       segment={1: dim("segment", min=field, max=1 << 22)}, new_frames={0: new},
                       hop_frames={0: hop})
        path = Path(self._dir.name) / f"encoders_{rows['content']}_{rows['emotion']}.onnx"
        program = quiet_export(graph, (), inputs, INPUTS, OUTPUTS, dynamic)
        program.save(str(path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _example(cfg, rows: dict[str, int]) -> dict[str, torch.Tensor]:
    """Inputs of a hop of 9 new rows (3 of them the hop's) in noise, over empty rings."""
    n, hop, kept = 9, 3, 90
    first, before = cnn_frame(kept), SAMPLE_RATE // 5  # the window starts 200 ms before the segment
    segment_len = STRIDE * (cnn_frame(kept + n - 1) + 1 - first) + cfg.content.receptive_field
    noise = np.random.default_rng(0).standard_normal((1, before + segment_len)).astype(np.float32)
    window = torch.from_numpy(noise)
    inputs = dict(window=window * 0.1, segment=window[:, before:] * 0.1, first_cnn_frame=torch.tensor(first),
                  new_frames=torch.arange(kept, kept + n), hop_frames=torch.arange(kept, kept + hop),
                  kept=torch.tensor(kept))
    for b, enc in (("content", cfg.content), ("emotion", cfg.emotion)):
        r = max(rows[b], 1)
        # separate tensors: an input passed twice would be traced as one
        inputs[f"{b}_keys"], inputs[f"{b}_values"] = (torch.zeros(enc.num_layers, r, enc.hidden_size) for _ in "kv")
        inputs[f"{b}_proj"] = torch.zeros(r, enc.hidden_size)
    return inputs


class OnnxIncrementalEncoder:
    """IncrementalEncoder's interface (rings, encode) with the encoders in ONNX Runtime: each
    stream's hop one run of the session, over its own slot of the rings."""

    def __init__(self, sessions: OnnxEncoders, grid: StreamGrid, slots: int, device, dtype):
        model = sessions.model
        self.model, self.grid = model, grid
        self.rings = {
            "content": EncoderRings(model.content_encoder, slots, grid.context, device, dtype),
            "emotion": EncoderRings(model.emotion_encoder, slots, grid.emotion_context, device, dtype),
        }
        self.session = sessions.session({"content": grid.context, "emotion": grid.emotion_context})

    def encode(self, windows: list[Window], samples: list[torch.Tensor], slots: list[int], kept: list[int],
               branches=BRANCHES) -> dict[str, EncodedRows]:
        """As IncrementalEncoder.encode (both branches always run)."""
        stride = self.grid.stride
        rows = []
        for w, x, slot, k in zip(windows, samples, slots, kept):
            window = x.numpy().astype(np.float32, copy=False)[None]
            first = min(cnn_frame(w.h0), w.c_hi)
            feeds = dict(window=window, segment=window[:, stride * (first - w.c_lo):],
                         first_cnn_frame=np.array(first, np.int64), new_frames=np.arange(w.h0, w.t1, dtype=np.int64),
                         hop_frames=np.arange(w.h0, w.h1, dtype=np.int64), kept=np.array(k, np.int64))
            for b in BRANCHES:
                ring = self.rings[b]
                feeds.update({f"{b}_keys": ring.k[slot].numpy(), f"{b}_values": ring.v[slot].numpy(),
                              f"{b}_proj": ring.proj[slot].numpy()})
            rows.append(dict(zip(OUTPUTS, self.session.run(None, feeds))))
        return {b: EncodedRows(*(torch.from_numpy(np.stack([r[f"{b}_{part}"] for r in rows]))
                                 for part in ("hidden", "new_keys", "new_values", "new_proj")))
                for b in BRANCHES}


class OnnxRuntimeBackend(EncoderBackend):
    name, title = "onnx", "ONNX"
    capabilities = Capabilities(devices=("cpu",), dtypes=(torch.float32,), encodings=("incremental",),
                                offline=False, static_shapes=False)

    def prepare(self, model) -> None:
        self.sessions = OnnxEncoders(model)

    def incremental_encoder(self, model, grid, slots: int, device, dtype):
        return OnnxIncrementalEncoder(self.sessions, grid, slots, device, dtype)

    def threads_note(self) -> str:
        return f"the encoders in ONNX Runtime on {self.sessions.threads}"
