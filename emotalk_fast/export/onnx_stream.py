"""Streaming ONNX export: one hop of an incremental stream as a graph whose every state is an
input and an output (as LLM exports pass `past_key_values`), so that a host with ONNX Runtime
alone, in a game engine, streams any length of audio through one export.

A hop (frames [h0, h1) of a stream with one style; no whole-utterance rule; with a ramp, the
first hops are shorter and run through the same graph) takes:

- `window` [1, W]: the hop's window of raw 16 kHz samples (context, hop, lookahead: the
  samples its frames read), for the normalisation statistics, as the Python stream;
- `segment` [1, S]: the part of the window the new rows' CNN frames read (from the first new
  CNN frame to the window's end); `first_cnn_frame` []: that frame's index;
- `new_frames` [n]: the new rows' frame indices (the hop and its lookahead, cut at the end);
  `hop_frames` [h]: the hop's own (its first h), where its outputs go;
- `kept` []: frames the encoder rings hold so far (the stream's frames before h0);
- `level` [1, levels], `person` [1, persons]: the style weights;
- the states: `content_keys`, `content_values` [layers, context, hidden], `content_proj`
  [context, hidden] (and `emotion_*` alike): the encoders' kept rows; `decoder_keys`,
  `decoder_values` [1, heads, cache, head_dim]: the decoder's ring.

and `emotion_sum` [1, hidden] (the emitted frames' emotion states, summed), and returns
`blendshapes` [h, 52], `emotion_logits` [labels] (the classifier on the mean emotion state of
the frames so far, as the stream's label) and every state updated (`next_*`). The host's arithmetic (which
samples a hop's window holds, when a hop may run) is in examples/onnx_stream.py, in numpy;
the metadata names the settings it needs.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from ..errors import InvalidInput
from ..model.config import BLENDSHAPE_NAMES, FPS, SAMPLE_RATE
from ..model.decoder import RingKVCache
from ..model.emotalk import EmoTalk
from ..streaming.grid import StreamGrid, Window, grid_indices
from ..streaming.incremental import encode_rows, new_row_features, write_rows
from ..streaming.settings import StreamSettings
from .onnx_export import quiet_export, save_graph

STATES = ("content_keys", "content_values", "content_proj", "emotion_keys", "emotion_values", "emotion_proj",
          "decoder_keys", "decoder_values", "emotion_sum")
INPUTS = ("window", "segment", "first_cnn_frame", "new_frames", "hop_frames", "kept", "level", "person") + STATES
OUTPUTS = ("blendshapes", "emotion_logits") + tuple(f"next_{s}" for s in STATES)


def stream_settings_for_export(settings: StreamSettings) -> StreamSettings:
    """The settings a streaming graph runs: incremental encoding, no whole-utterance rule (the
    host keeps no utterance). A ramp's shorter first hops run through the same graph (its hop
    dimension is dynamic up to the hop); the host schedules them."""
    if settings.is_auto:
        raise InvalidInput("a streaming export needs a concrete hop_ms, not auto")
    # the stream's settings whole (a new field reaches the export), with what a graph cannot hold
    # replaced: incremental runs the emotion branch every hop, so no cadence of its own
    return replace(settings, whole_utterance_ms=0, encoding="incremental", emotion_hop_ms=None)


class IncrementalHopGraph(nn.Module):
    """One incremental hop of one stream, every state in and out (the module docstring)."""

    def __init__(self, model: EmoTalk, settings: StreamSettings):
        super().__init__()
        self.model = model
        self.settings = stream_settings_for_export(settings)
        self.grid = StreamGrid.for_model(self.settings, model.cfg)
        self.cache_frames = max(int(self.settings.max_cache_s * FPS), self.grid.hop)  # as the engine's

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each state's shape (a new stream's states are zeros)."""
        cfg, dec = self.model.cfg, self.model.decoder.cfg
        shapes = {}
        for name, enc, rows in (("content", cfg.content, self.grid.context),
                                ("emotion", cfg.emotion, self.grid.emotion_context)):
            rows = max(rows, 1)  # as EncoderRings: a context of 0 keeps one row, never read
            shapes[f"{name}_keys"] = shapes[f"{name}_values"] = (enc.num_layers, rows, enc.hidden_size)
            shapes[f"{name}_proj"] = (rows, enc.hidden_size)
        shapes["decoder_keys"] = shapes["decoder_values"] = (1, dec.num_heads, self.cache_frames,
                                                             dec.feature_dim // dec.num_heads)
        shapes["emotion_sum"] = (1, cfg.emotion.hidden_size)  # the emitted frames' emotion states, summed
        return shapes

    def forward(self, window, segment, first_cnn_frame, new_frames, hop_frames, kept, level, person,
                content_keys, content_values, content_proj, emotion_keys, emotion_values, emotion_proj,
                decoder_keys, decoder_values, emotion_sum):
        model = self.model
        hop, slot = hop_frames.shape[0], torch.zeros(1, dtype=torch.long)
        rings = {"content": (content_keys, content_values, content_proj, self.grid.context),
                 "emotion": (emotion_keys, emotion_values, emotion_proj, self.grid.emotion_context)}
        encoded = encode_new_rows(model, self.grid, rings, window, segment, first_cnn_frame, new_frames, kept, hop)
        hidden, states = {}, []
        for name, out in encoded.items():
            k, v, proj, rows = rings[name]
            hidden[name] = out.hidden[:, :hop]
            states += [k, v, proj] if rows == 0 else [write_rows(k, out.k[0], kept, rows, 1),
                                                      write_rows(v, out.v[0], kept, rows, 1),
                                                      write_rows(proj, out.proj[0], kept, rows, 0)]
        x, memory = model.decoder_inputs(hidden["content"], hidden["emotion"], level, person)
        cache = RingKVCache.__new__(RingKVCache)  # the ring's buffers are this graph's inputs
        cache.k, cache.v, cache.capacity = decoder_keys.clone(), decoder_values.clone(), self.cache_frames
        out = model.decoder.step_at(x, memory, cache, slot, hop_frames[:1], self.cache_frames)
        # the stream's label: the classifier on the mean emotion state of the frames so far (0 .. h1)
        emotion_sum = emotion_sum + hidden["emotion"].sum(1)
        logits = model.emotion_encoder.classify(emotion_sum / (hop_frames[-1:] + 1).to(emotion_sum.dtype))
        return (model.blendshape_head(out)[0].float(), logits[0].float(), *states, cache.k, cache.v, emotion_sum)


def encode_new_rows(model: EmoTalk, grid: StreamGrid, rings: dict, window, segment, first_cnn_frame, new_frames,
                    kept, hop: int) -> dict:
    """One stream's hop through both encoders, incrementally (incremental.py's functions), on a
    graph's inputs: the window's raw samples [1, W], the segment the new rows' CNN frames read
    (its tail) [1, S], its first CNN frame [], the new rows' frame indices [n], the frames kept so
    far [], and per encoder its ring (keys, values [layers, rows, hidden], projected features
    [rows, hidden], rows) -> {branch: EncodedRows}."""
    n_window, n_segment = window.shape[1], segment.shape[1]
    # normalised over the window, as the stream does; the segment is the window's tail
    wave = model.prepare_wave(window, torch.full((1,), n_window, dtype=torch.long))
    wave = wave.narrow(1, n_window - n_segment, n_segment)
    lo = first_cnn_frame.reshape(1, 1)
    i0, i1, frac = grid_indices(new_frames[None], lo, lo + (n_segment - grid.field) // grid.stride)
    feats = new_row_features(model, wave, i0, i1, frac)
    slot, kept = torch.zeros(1, dtype=torch.long), kept.reshape(1)
    out = {}
    for name, enc in (("content", model.content_encoder), ("emotion", model.emotion_encoder)):
        k, v, proj, rows = rings[name]
        ring = SimpleNamespace(k=k[None], v=v[None], proj=proj[None], rows=rows)
        out[name] = encode_rows(enc, ring, feats[name], slot, kept, hop)
    return out


def hop_inputs(grid: StreamGrid, w: Window, window: torch.Tensor, kept: int) -> dict[str, torch.Tensor]:
    """A hop's encoder inputs of the graph from its window's raw samples [1, W] (what a host
    computes: examples/onnx_stream.py does it in numpy)."""
    new = grid.new_rows(w)
    return dict(window=window, segment=window[:, new.offset :], first_cnn_frame=torch.tensor(new.first),
                new_frames=torch.arange(w.h0, w.t1), hop_frames=torch.arange(w.h0, w.h1), kept=torch.tensor(kept))


def example_inputs(graph: IncrementalHopGraph) -> dict[str, torch.Tensor]:
    """Inputs of a steady hop (full window and new rows) in noise, with zero states."""
    grid = graph.grid
    w = grid.window(grid.steady())
    window = torch.from_numpy(np.random.default_rng(0).standard_normal((1, w.s1 - w.s0)).astype(np.float32) * 0.1)
    dec = graph.model.cfg.decoder
    level, person = torch.zeros(1, dec.num_levels), torch.zeros(1, dec.num_persons)
    level[0, min(1, dec.num_levels - 1)], person[0, 0] = 1.0, 1.0
    inputs = dict(hop_inputs(grid, w, window, w.h0), level=level, person=person)
    inputs.update({name: torch.zeros(shape) for name, shape in graph.state_shapes().items()})
    return inputs


def metadata(graph: IncrementalHopGraph) -> dict[str, str]:
    """What a host needs beside the graph: the settings in frames and samples, the names."""
    grid, s = graph.grid, graph.settings
    return {"kind": "emotalk_fast incremental stream hop", "sample_rate": str(SAMPLE_RATE), "fps": str(FPS),
            "hop_ms": str(s.hop_ms), "lookahead_ms": str(s.lookahead_ms), "context_ms": str(s.context_ms),
            "emotion_context_ms": str(s.emotion_context), "hop_frames": str(grid.hop),
            "lookahead_frames": str(grid.lookahead), "context_frames": str(grid.context),
            "emotion_context_frames": str(grid.emotion_context), "cache_frames": str(graph.cache_frames),
            "ramp": json.dumps(bool(s.ramp)),
            "cnn_stride": str(grid.stride), "cnn_field": str(grid.field),
            "blendshapes": json.dumps(list(BLENDSHAPE_NAMES)),
            "emotion_labels": json.dumps(list(graph.model.cfg.emotion_labels)),
            "num_levels": str(graph.model.cfg.decoder.num_levels),
            "num_persons": str(graph.model.cfg.decoder.num_persons),
            "state_shapes": json.dumps(graph.state_shapes())}


def export_stream_onnx(model: EmoTalk, path, settings: StreamSettings) -> dict:
    """Write the incremental hop of `settings` (concrete hop; no ramp, no whole-utterance rule)
    to `path` (float32, CPU) -> its metadata."""
    if next(model.parameters()).dtype != torch.float32:
        raise InvalidInput("the ONNX export is float32: load the model with dtype float32")
    model = model.cpu().eval()
    graph = IncrementalHopGraph(model, settings).eval()
    inputs = example_inputs(graph)
    grid = graph.grid
    dim = torch.export.Dim
    window, segment = dim("window", min=grid.field, max=1 << 20), dim("segment", min=grid.field, max=1 << 20)
    new, hop = dim("new_frames", min=1, max=grid.hop + grid.lookahead), dim("hop_frames", min=1, max=grid.hop)
    dynamic = {name: None for name in INPUTS}
    dynamic.update(window={1: window}, segment={1: segment}, new_frames={0: new}, hop_frames={0: hop})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = quiet_export(graph, (), inputs, INPUTS, OUTPUTS, dynamic)
    meta = metadata(graph)
    save_graph(program, path, meta)
    return meta
