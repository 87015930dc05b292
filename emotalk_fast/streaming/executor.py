"""Runs a planned group of hops through the model and returns what it computed, changing no
stream state (gpt-fast's `decode_one_token`: the step as a function of model, cache and inputs).

`run_hop` is the hop function: the hop encoder (windowed or incremental, encoders.HopEncoder)
over the hops' windows or new rows, one decoder step over the streams' KV rings. The engine runs
it, a CUDA graph captures it, and `time_steady_hop` (the budget) times it.

With `cuda_graphs`, every full hop has static shapes: each window (or a full hop's new rows)
padded to the grid's longest, the batch padded to a bucket (1, 2, 4, ... max_streams) whose
padding rows decode into a scratch cache slot (and read a scratch encoder ring), and the decoder
reading the whole ring. On CUDA each bucket's hop is captured once as a CUDA graph and replayed;
on the CPU the same static path runs eagerly, which is how it is tested.
"""
from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import InvalidInput
from ..model.config import FPS
from ..model.emotalk import EmoTalk
from .backend import DEFAULT, EncoderBackend
from .encoders import BRANCHES, HopEncoder, WindowedEncoder
from .grid import StreamGrid, Window
from .scheduler import EmotionSource, GroupPlan
from .streams import StreamState


@dataclass(frozen=True)
class EmotionRun:
    """Emotion states computed in a hop for frames first, first + 1, ... (kept for later hops)."""

    states: torch.Tensor  # [n, hidden]
    first: int
    logits: torch.Tensor | None  # [labels]: the whole utterance's, when it ran over all of it


@dataclass(frozen=True)
class HopResult:
    """What a group's forward computed, row by row in the plan's order."""

    frames: np.ndarray  # [B, hop, 52] float32
    emotion_sums: torch.Tensor  # [B, 1, hidden]: each row's emotion states summed over its hop
    emotion_runs: dict[int, EmotionRun]  # row -> the emotion run it made, if any
    encoded: dict | None = None  # what the hop rows leave to keep ({branch: EncodedRows}; incremental)


def run_hop(model: EmoTalk, encoder: HopEncoder, cache, *, level, person, slots, starts, span: int, hop: int,
            emotion=None, own=None, **inputs):
    """One batched hop: the encoder over its inputs, one decoder step over the slots' rings ->
    blendshapes [B, hop, 52], the emotion states summed over the hop [B, 1, hidden], what the
    hop leaves to keep. `emotion` [B, hop, hidden]: the hop's emotion states where they come from
    elsewhere (a separate emotion branch, kept states, the whole utterance), so the encoder runs
    the content branch only, unless it keeps both branches' rows; then `own` [B, 1, 1] (bool)
    marks the rows that take the hop's own states. Tensors in, tensors out, nothing read back to
    the host: the function a CUDA graph captures."""
    branches = ("content",) if emotion is not None and not encoder.keeps_rows else BRANCHES
    states = encoder.encode_inputs(**inputs, slots=slots, hop=hop, branches=branches)
    if emotion is None:
        emotion = states.emotion
    elif own is not None:
        emotion = torch.where(own, states.emotion, emotion)
    device = model.content_map.weight.device
    x, memory = model.decoder_inputs(states.content, emotion, level.to(device), person.to(device))
    out = model.decoder.step_at(x, memory, cache, slots, starts.to(device), span)
    return model.blendshape_head(out), emotion.sum(1, keepdim=True), states.rows


def hop_encoder(encoders: EncoderBackend, model: EmoTalk, grid: StreamGrid, slots: int, device, dtype) -> HopEncoder:
    """The hop encoder of a grid's encoding, from a backend: windowed, or its incremental encoder
    over the rings of `slots` streams."""
    if grid.settings.incremental:
        return encoders.incremental_encoder(model, grid, slots, device, dtype)
    return WindowedEncoder(model, grid)


class Executor:
    """The model, its hop encoder and the KV cache of `slots` streams (plus a scratch slot for
    static shapes); `run(plan, streams)` -> HopResult."""

    def __init__(self, model: EmoTalk, device, dtype, grid: StreamGrid, slots: int, cache_frames: int,
                 cuda_graphs: bool = False, encoders: EncoderBackend = DEFAULT):
        encoders.verify(device, dtype, encoding=grid.settings.encoding, cuda_graphs=cuda_graphs)
        self.model, self.device, self.dtype, self.grid = model, torch.device(device), dtype, grid
        self.cuda_graphs = bool(cuda_graphs)
        self.encoder = hop_encoder(encoders, model, grid, slots + self.cuda_graphs, self.device, dtype)
        self.windowed = WindowedEncoder(model, grid)  # emotion windows of their own, and kept states
        self.buckets = batch_buckets(slots)
        self.scratch_slot = slots  # padding rows of a static batch decode here
        check_cache_fits(model, slots + self.cuda_graphs, cache_frames, self.device, dtype)
        self.cache = model.decoder.new_cache(slots + self.cuda_graphs, cache_frames, self.device, dtype)
        self.static_hops: dict[int, StaticHop] = {}  # bucket -> its captured hop
        # one memory pool for every bucket's graph (they replay one at a time on one stream)
        self._graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs and self.device.type == "cuda" else None

    def run(self, plan: GroupPlan, streams: list[StreamState]) -> HopResult:
        """One group's forward. Reads the streams' state and changes none of it (it writes their
        KV rows at positions the streams have not reached yet, which a retry would write again)."""
        windows = [r.window for r in plan.rows]
        samples = [torch.from_numpy(s.samples(w)).to(self.device) for s, w in zip(streams, windows)]
        kept = [s.encoded_rows for s in streams]
        slots = [s.slot for s in streams]
        starts = [self.grid.start(s.next_hop) for s in streams]  # where each stream's frames go in its slot
        level, person = self._style_rows(streams, windows, per_frame=plan.static)
        runs, emotion, own = {}, None, None
        with torch.inference_mode():
            if not plan.joint:
                runs = self._run_emotion(plan, streams)
                emotion, own = self._emotion_rows(plan, streams, runs)
            if plan.static:
                out = self._run_static(windows, samples, kept, level, person, slots, starts, emotion=emotion)
            else:
                inputs = self.encoder.batch_inputs(windows, samples, kept)
                out = run_hop(self.model, self.encoder, self.cache, **inputs, level=level, person=person,
                              slots=torch.tensor(slots), starts=torch.tensor(starts),
                              span=self._span(starts, plan.hop), hop=plan.hop, emotion=emotion, own=own)
            # copies: a graph's outputs are overwritten by its next replay
            blendshapes, sums, encoded = out
            rows = len(plan.rows)
            if encoded is not None:
                encoded = {name: e.head(rows) for name, e in encoded.items()}
            return HopResult(blendshapes[:rows].float().cpu().numpy(), sums[:rows].clone(), runs, encoded)

    def _span(self, starts: list[int], hop: int) -> int:
        """Ring frames an eager decoder step reads: up to the furthest stream's new frames."""
        return min(self.cache.capacity, max(starts) + hop)

    def _emotion_rows(self, plan: GroupPlan, streams: list[StreamState], runs: dict[int, EmotionRun]):
        """Each row's emotion states for its hop [B, hop, hidden], from a run made this hop or the
        states kept before -> (states, own): where the encoder keeps both branches' rows, a JOINT
        row takes the hop's own states (`own` [B, 1, 1] marks them; their rows here are zeros)."""
        own = [r.emotion is EmotionSource.JOINT and self.encoder.keeps_rows for r in plan.rows]
        rows = [None if own[b] else self.windowed.kept_for(*self._kept(runs.get(b), s), r.window)
                for b, (r, s) in enumerate(zip(plan.rows, streams))]
        like = next(x for x in rows if x is not None)  # a plan that is not all JOINT has one
        states = torch.stack([like.new_zeros(like.shape) if x is None else x for x in rows])
        return states, (torch.tensor(own, device=states.device)[:, None, None] if any(own) else None)

    def keep_encoded(self, slot: int, kept: int, result: HopResult, b: int) -> None:
        """Commit: row b's hop rows into its slot's rings (incremental encoding), after `kept` frames."""
        if result.encoded is not None:
            with torch.inference_mode():
                self.encoder.commit(slot, kept, result.encoded, b)

    @staticmethod
    def _kept(run: EmotionRun | None, s: StreamState) -> tuple:
        return (run.states, run.first) if run is not None else (s.emotion_kept, s.kept_from)

    def _run_emotion(self, plan: GroupPlan, streams: list[StreamState]) -> dict[int, EmotionRun]:
        """The emotion runs a hop needs -> {row: EmotionRun}: one batched forward over the rows'
        emotion windows, and the whole-utterance rows one by one (rare: once per short utterance)."""
        runs = {}
        # a joint row in a group that is not all joint (beside a whole-utterance row) runs its window
        # here, unless the hop encoder runs its emotion branch anyway
        fresh = (EmotionSource.WINDOW,) if self.encoder.keeps_rows else (EmotionSource.WINDOW, EmotionSource.JOINT)
        rows = [b for b, r in enumerate(plan.rows) if r.emotion in fresh]
        if rows:
            ws = [self.grid.emotion_window(streams[b].next_hop, *streams[b].totals) for b in rows]
            xs = [torch.from_numpy(streams[b].samples(w)).to(self.device) for b, w in zip(rows, ws)]
            states = self.windowed.encode_inputs(**self.windowed.batch_inputs(ws, xs), branches=("emotion",)).emotion
            runs.update((b, EmotionRun(states[i, : w.h1 - w.h0], w.h0, None)) for i, (b, w) in enumerate(zip(rows, ws)))
        for b in (b for b, r in enumerate(plan.rows) if r.emotion is EmotionSource.WHOLE):
            s = streams[b]
            n = torch.tensor([s.received], device=self.device)
            wave = self.model.prepare_wave(torch.from_numpy(s.buffer[: s.received]).to(self.device)[None], n)
            hidden, logits = self.model.encode_emotion(wave, n, [s.total_frames])
            h0 = self.grid.start(s.next_hop)
            runs[b] = EmotionRun(hidden[0, h0:], h0, logits[0])
        return runs

    def _style_rows(self, streams: list[StreamState], windows: list[Window], per_frame: bool = False):
        """Level and person weights: [B, n] when every stream's style is constant over its hop
        (and not `per_frame`), else [B, t, n] per frame."""
        fading = per_frame or any(s.fade_frames and w.h0 < s.fade_start + s.fade_frames
                                  for s, w in zip(streams, windows))
        if not fading:
            rows = [np.stack([s.style_to[i] for s in streams]) for i in range(2)]
        else:
            rows = [np.stack([np.stack([s.style_at(f)[i] for f in range(w.h0, w.h1)])
                              for s, w in zip(streams, windows)]) for i in range(2)]
        return tuple(torch.as_tensor(r).to(self.dtype) for r in rows)

    # --- static shapes ----------------------------------------------------------------------
    def prepare_static_hops(self) -> None:
        """Build every batch bucket's static hop now (on CUDA: capture its graph, seconds for the
        release-size model), so that no live stream waits on a capture later."""
        if not self.cuda_graphs:
            raise RuntimeError("prepare_static_hops() needs an engine made with cuda_graphs=True")
        w = self.grid.window(self.grid.steady())  # a steady window, in silence
        dec = self.model.cfg.decoder
        level, person = (torch.zeros(1, w.h1 - w.h0, n, dtype=self.dtype) for n in (dec.num_levels, dec.num_persons))
        emotion = None
        if self.grid.separate_emotion:
            emotion = torch.zeros(1, w.h1 - w.h0, self.model.cfg.emotion.hidden_size, dtype=self.dtype,
                                  device=self.device)
        with torch.inference_mode():
            for bucket in self.buckets:
                self._static_hop(bucket, self._static_inputs(bucket, [w], [torch.zeros(w.s1 - w.s0)], [0], level,
                                                             person, [self.scratch_slot], [0], emotion=emotion))

    def _run_static(self, windows, samples, kept, level, person, slots: list[int], starts: list[int], emotion=None):
        """The hop padded to its bucket's static shapes, through that bucket's StaticHop (`emotion`:
        a separate emotion branch's states)."""
        bucket = next(b for b in self.buckets if b >= len(windows))
        inputs = self._static_inputs(bucket, windows, samples, kept, level, person, slots, starts, emotion=emotion)
        return self._static_hop(bucket, inputs)(inputs)

    def _static_inputs(self, bucket: int, windows, samples, kept, level, person, slots: list[int],
                       starts: list[int], emotion=None):
        pad = bucket - len(windows)
        inputs = self.encoder.batch_inputs(windows, samples, kept, pad_to=(bucket, *self.encoder.longest))
        inputs.update(level=_pad_rows(level, bucket), person=_pad_rows(person, bucket),
                      slots=torch.tensor(slots + [self.scratch_slot] * pad), starts=torch.tensor(starts + [0] * pad))
        if emotion is not None:  # the emotion states of a separate emotion branch
            inputs["emotion"] = _pad_rows(emotion, bucket)
        return inputs

    def _static_hop(self, bucket: int, inputs: dict) -> StaticHop:
        """The bucket's StaticHop, built on first use from these inputs' shapes."""
        if bucket not in self.static_hops:
            # captured on a batch of padding rows only: warm-up runs touch no stream's cache
            example = dict(inputs, slots=torch.full_like(inputs["slots"], self.scratch_slot))
            # a weak reference: the executor owns its hops, and a hop holding it back would make a
            # cycle that keeps the model's memory until the garbage collector happens to run
            this = weakref.ref(self)
            self.static_hops[bucket] = StaticHop(lambda x: this()._static_hop_fn(x), example, self.device,
                                                 self._graph_pool)
        return self.static_hops[bucket]

    def _static_hop_fn(self, inputs: dict) -> tuple:
        """The hop a StaticHop runs: a full hop, the decoder reading its whole ring."""
        return run_hop(self.model, self.encoder, self.cache, **inputs, span=self.cache.capacity, hop=self.grid.hop)


def time_steady_hop(model: EmoTalk, device, dtype, grid: StreamGrid, streams: int,
                    repeats: int = 3, encoders: EncoderBackend = DEFAULT) -> tuple[float, float]:
    """Seconds one batched hop of `streams` streams takes at a grid's settings, in the steady
    state (every window full length, every encoder ring full; noise audio), the fastest of
    `repeats` -> (mean, peak): with an emotion branch of its own, the mean over its cadence (a
    hop without the emotion run plus the run's share) and the hop that runs it; else the same
    number twice. Runs `run_hop` on a hop encoder and a KV cache of its own: no live stream is
    touched."""
    if streams < 1 or repeats < 1:
        raise InvalidInput(f"streams and repeats must be >= 1, got {streams}, {repeats}")
    device = torch.device(device)
    encoder = hop_encoder(encoders, model, grid, streams, device, dtype)
    windowed = WindowedEncoder(model, grid)
    k = grid.steady()  # steady windows (t0 > 0) of both branches
    w, ew = grid.window(k), grid.emotion_window(k)
    cache = model.decoder.new_cache(streams, w.h1 + 1, device, dtype)
    first = min(w.s0, ew.s0)  # the noise covers both windows, which end together
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(ew.s1 - first)
                             .astype(np.float32) * 0.1).to(device)
    dec = model.cfg.decoder
    level, person = (torch.zeros(streams, n, dtype=dtype) for n in (dec.num_levels, dec.num_persons))
    full = [max(grid.context, grid.emotion_context)] * streams  # every ring row kept
    best = (float("inf"), float("inf"))
    with torch.inference_mode():
        for run in range(repeats + 1):  # the first run warms up
            t0 = time.perf_counter()
            emotion = None
            if grid.separate_emotion:
                x = noise[ew.s0 - first :]
                states = windowed.encode_inputs(**windowed.batch_inputs([ew] * streams, [x] * streams),
                                                branches=("emotion",)).emotion
                emotion_s = time.perf_counter() - t0
                emotion = states[:, : grid.hop]
                t0 = time.perf_counter()
            inputs = encoder.batch_inputs([w] * streams, [noise[w.s0 - first :]] * streams, full)
            blendshapes, _, _ = run_hop(model, encoder, cache, **inputs, level=level, person=person,
                                        slots=torch.arange(streams), starts=torch.full((streams,), w.h0), span=w.h1,
                                        hop=grid.hop, emotion=emotion)
            blendshapes.float().cpu()
            took = time.perf_counter() - t0
            took = (took + emotion_s * grid.hop / grid.emotion_hop, took + emotion_s) if grid.separate_emotion \
                else (took, took)
            best = min(best, took) if run else best
    return best


def check_cache_fits(model: EmoTalk, slots: int, frames: int, device: torch.device, dtype) -> None:
    """The KV cache is reserved up front (on the CPU its pages are touched only as streams
    reach them), but every stream may run to its end: refuse, in one line, a cache larger than
    the device's memory instead of failing inside the allocator."""
    cfg = model.decoder.cfg
    need = 2 * slots * cfg.feature_dim * frames * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise InvalidInput(f"a decoder KV cache for {slots} streams of up to {frames / FPS:g} s is "
                           f"{need / 2**30:.1f} GiB, more than this {device.type} memory ({have / 2**30:.1f} GiB): "
                           "lower max_streams or the longest stream (serve: --max-streams, --max-audio-s)")


def batch_buckets(max_streams: int) -> list[int]:
    """The static batch sizes: 1, 2, 4, ... below max_streams, then max_streams."""
    sizes = [1 << i for i in range(max_streams.bit_length()) if 1 << i < max_streams]
    return sizes + [max_streams]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [B, ...] zero-padded to [rows, ...]."""
    return torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])


class StaticHop:
    """A hop function over static input buffers (fixed shapes, fixed addresses). On CUDA it is
    captured once as a CUDA graph and each call replays it; elsewhere each call runs it eagerly
    on the same buffers. `example`: inputs to warm up and capture with (they must be harmless)."""

    def __init__(self, fn: Callable[[dict], tuple], example: dict, device: torch.device, pool=None):
        self.fn = fn
        self.inputs = {k: v.to(device).clone() for k, v in example.items()}
        self.graph = None
        if device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up off the default stream: kernels compiled, pools settled
                for _ in range(2):
                    fn(self.inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # a pool shared with other graphs is safe: each call's outputs are copied out before
            # another graph replays
            with torch.cuda.graph(self.graph, pool=pool):
                self.outputs = fn(self.inputs)

    def __call__(self, inputs: dict) -> tuple:
        for name, value in inputs.items():
            self.inputs[name].copy_(value)
        if self.graph is None:
            return self.fn(self.inputs)
        self.graph.replay()
        return self.outputs
