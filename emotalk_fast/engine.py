"""Many streams, one model: which streams advance, and one batched forward per hop.

Each stream is a small record (its audio since the oldest window it still needs, its next hop,
its style, its cache slot). `step()` takes every stream whose next hop is ready and runs both
encoders over all their windows in one padded, masked batch, then one decoder step over their
ragged KV caches (one preallocated ring, a slot per stream). A stream's frames do not depend
on what shares its batch: rows of a padded batch are computed independently (tested against a
stream alone within 1e-5).

A step is plan -> run -> commit (vLLM's engine core: schedule, execute, update from output):
the plan groups the ready streams by hop length (the last, shorter hop of a flushed stream runs
in its own group); each group's forward reads stream state and changes none of it; only a group
whose forward succeeded commits (next hops, emotion sums, buffers). A group that raises fails
its own streams only, unchanged, and `step()` raises StepFailed after every other group has
committed, carrying their frames. Errors in one stream's input raise in that stream's call and
leave every other stream, and the stream itself, unchanged.

With `cuda_graphs`, every full hop has static shapes: each window padded to the engine's one
longest window, the batch padded to a bucket (1, 2, 4, ... max_streams) whose padding rows
decode into a scratch cache slot, and the decoder reading the whole ring. On CUDA each bucket's
hop (both encoders and the decoder step) is captured once as a CUDA graph and replayed; on the
CPU the same static path runs eagerly, which is how it is tested. The last, shorter hop of a
flushed stream runs eagerly.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .audio import StreamingResampler, check_rate
from .config import FPS, SAMPLE_RATE
from .controls import check_style
from .errors import InvalidInput, InvalidType
from .model import EmoTalk, num_frames
from .windows import Window, WindowedEncoder


class EngineFull(RuntimeError):
    """open() while `max_streams` streams are live."""


class StepFailed(RuntimeError):
    """Some groups of a step raised. `frames`: what the groups that succeeded emitted (committed,
    as step() would have returned it); `failed`: {stream id: the exception of its group}. A
    failed stream's state is as before the step."""

    def __init__(self, frames: dict[int, np.ndarray], failed: dict[int, BaseException]):
        first = next(iter(failed.values()))
        super().__init__(f"{len(failed)} stream(s) failed in a step: {type(first).__name__}: {first}")
        self.frames, self.failed = frames, failed


@dataclass
class _Stream:
    """One live stream's state: everything the engine knows about it."""

    slot: int  # its row of the KV cache
    sample_rate: int
    resampler: StreamingResampler | None
    level: object
    person: object
    style_from: tuple = ()  # (level weights, person weights) fading from ...
    style_to: tuple = ()  # ... to these
    fade_start: int = 0  # frame where the fade starts
    fade_frames: int = 0
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # 16 kHz samples
    buffer_start: int = 0  # absolute index of buffer[0]
    received: int = 0  # 16 kHz samples received in all
    next_hop: int = 0
    ending: bool = False  # flush() was called: the clip's length is known
    total_frames: int = 0  # once ending: the frames the whole utterance gets
    emotion_sum: torch.Tensor | None = None  # sum of emitted frames' emotion states [1, hidden]
    emotion_frames: int = 0

    def style_at(self, frame: int):
        if self.fade_frames == 0 or frame >= self.fade_start + self.fade_frames:
            return self.style_to
        a = max(0.0, (frame - self.fade_start) / self.fade_frames)
        return tuple((1 - a) * f + a * t for f, t in zip(self.style_from, self.style_to))


class StreamEngine:
    """Up to `max_streams` concurrent streams over one model, advanced together by `step()`.

    >>> engine = StreamEngine(animator.model, "cpu", torch.float32, max_streams=8)
    >>> a = engine.open(level=1, person=0, sample_rate=48000)
    >>> engine.push(a, chunk)                 # any sizes, any time
    >>> frames = engine.step()                # {stream id: float32 [k, 52]} for streams that advanced
    >>> engine.flush(a)                       # the end of a's audio; later steps emit its last frames
    >>> engine.close(a)                       # frees its slot

    cuda_graphs: static shapes for every full hop, on CUDA each batch bucket's hop a captured
    graph (see the module's docstring); `prepare_static_hops()` builds them all up front.
    """

    def __init__(self, model: EmoTalk, device, dtype, *, max_streams: int = 16, hop_ms: int = 100,
                 lookahead_ms: int = 200, context_ms: int = 2000, max_cache_s: float = 600.0,
                 cuda_graphs: bool = False):
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise InvalidInput(f"max_streams must be a positive integer, got {max_streams!r}")
        if not max_cache_s > 0:
            raise InvalidInput(f"max_cache_s must be > 0, got {max_cache_s!r}")
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.encoder = WindowedEncoder(model, hop_ms, lookahead_ms, context_ms)
        self.hop_ms, self.lookahead_ms, self.context_ms = hop_ms, lookahead_ms, context_ms
        self.max_streams = max_streams
        self.max_cache_frames = max(int(max_cache_s * FPS), self.encoder.hop)
        self.cuda_graphs = bool(cuda_graphs)
        self.buckets = batch_buckets(max_streams)
        self._scratch_slot = max_streams  # padding rows of a static batch decode here
        self.cache = model.decoder.new_cache(max_streams + self.cuda_graphs, self.max_cache_frames, self.device,
                                             dtype)
        self._static_hops: dict[int, StaticHop] = {}  # bucket -> its captured hop
        # one memory pool for every bucket's graph (they replay one at a time on one stream)
        self._graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs and self.device.type == "cuda" else None
        self._streams: dict[int, _Stream] = {}
        self._free_slots = list(range(max_streams))
        self._next_id = 0

    # --- stream life cycle ----------------------------------------------------------------
    def open(self, level=1, person=0, sample_rate: int = SAMPLE_RATE) -> int:
        """A new stream -> its id. Raises EngineFull when `max_streams` are live."""
        rate = check_rate(sample_rate)
        style = check_style(self.model.cfg, level, person)  # bad style: nothing is allocated
        if not self._free_slots:
            raise EngineFull(f"all {self.max_streams} streams are live; close one first")
        slot = self._free_slots.pop(0)
        resampler = None if rate == SAMPLE_RATE else StreamingResampler(rate, SAMPLE_RATE)
        sid, self._next_id = self._next_id, self._next_id + 1
        self._streams[sid] = _Stream(slot, rate, resampler, level, person, style, style)
        return sid

    def reset(self, sid: int, level=None, person=None) -> None:
        """Start a new utterance on the same stream (same slot and rate), optionally restyled."""
        s = self._get(sid)
        level = s.level if level is None else level
        person = s.person if person is None else person
        style = check_style(self.model.cfg, level, person)
        if s.resampler is not None:
            s.resampler.reset()
        self._streams[sid] = _Stream(s.slot, s.sample_rate, s.resampler, level, person, style, style)

    def close(self, sid: int) -> None:
        """End a stream at once (its pending frames are dropped) and free its slot."""
        s = self._streams.pop(sid, None)
        if s is None:
            raise KeyError(f"no live stream {sid}")
        self._free_slots.append(s.slot)
        self._free_slots.sort()

    @property
    def live(self) -> list[int]:
        return list(self._streams)

    @property
    def num_live(self) -> int:
        """Streams open (a single read: safe from another thread)."""
        return len(self._streams)

    @property
    def emotion_labels(self) -> tuple[str, ...]:
        return self.model.cfg.emotion_labels

    @property
    def num_persons(self) -> int:
        return self.model.cfg.decoder.num_persons

    def _get(self, sid: int) -> _Stream:
        try:
            return self._streams[sid]
        except KeyError:
            raise KeyError(f"no live stream {sid}") from None

    # --- input ------------------------------------------------------------------------------
    def push(self, sid: int, samples) -> None:
        """Append mono float samples at the stream's rate. A bad chunk raises and is not added."""
        s = self._get(sid)
        if s.ending:
            raise RuntimeError("push() after flush(): call reset() to start a new utterance")
        chunk = validate_chunk(samples)
        if s.resampler is not None:
            chunk = s.resampler.push(chunk)
        _append(s, chunk)

    def flush(self, sid: int) -> None:
        """The end of the stream's audio: the next steps emit its remaining frames, the last
        windows cut at the audio's end (as many frames in all as offline animation gives)."""
        s = self._get(sid)
        if s.ending:
            raise RuntimeError("flush() called twice: call reset() to start a new utterance")
        if s.resampler is not None:
            _append(s, s.resampler.flush())
        n = s.received
        if n and n < self.encoder.field:
            raise InvalidInput(f"the audio is too short to animate: {1000 * n / SAMPLE_RATE:.1f} ms "
                               f"(at least {1000 * self.encoder.field / SAMPLE_RATE:g} ms)")
        s.ending, s.total_frames = True, num_frames(n) if n else 0

    def set_style(self, sid: int, level=None, person=None, crossfade_ms: float = 0.0) -> None:
        """Change level and/or person from the stream's next frame not yet emitted, fading
        linearly over `crossfade_ms`."""
        s = self._get(sid)
        if not crossfade_ms >= 0:
            raise InvalidInput(f"crossfade_ms must be >= 0, got {crossfade_ms!r}")
        level = s.level if level is None else level
        person = s.person if person is None else person
        new = check_style(self.model.cfg, level, person)
        start = s.next_hop * self.encoder.hop
        s.style_from, s.style_to = s.style_at(start), new
        s.level, s.person = level, person
        s.fade_start, s.fade_frames = start, int(round(crossfade_ms / 1000 * FPS))

    # --- state readouts ---------------------------------------------------------------------
    def style(self, sid: int) -> tuple:
        """(level, person) as last set."""
        s = self._get(sid)
        return s.level, s.person

    def latency_ms(self, sid: int) -> float:
        """Algorithmic latency: audio time from a frame's instant until the sample that makes it
        final arrives (the worst frame of a steady-state hop; compute time not included), at
        the stream's own rate (its resampler's delay included)."""
        k = self.encoder.context // self.encoder.hop + 2  # a hop past any start-up effect
        w = self.encoder.window(k)
        latency = w.s1 / SAMPLE_RATE - w.h0 / FPS
        s = self._get(sid)
        r = s.resampler
        if r is not None:  # 16 kHz sample j needs input up to its filter's end
            newest_input = ((w.s1 - 1 + r.first) * r.down) // r.up
            latency += (newest_input + 1) / s.sample_rate - w.s1 / SAMPLE_RATE
        return round(1000.0 * latency, 1)  # 0.1 ms: finer than any clock it is compared with

    def frames_emitted(self, sid: int) -> int:
        s = self._get(sid)
        return min(s.next_hop * self.encoder.hop, s.total_frames) if s.ending else s.next_hop * self.encoder.hop

    def finished(self, sid: int) -> bool:
        """Flushed and every frame emitted."""
        s = self._get(sid)
        return s.ending and s.next_hop * self.encoder.hop >= s.total_frames

    def emotion_logits(self, sid: int) -> np.ndarray | None:
        """The emotion classifier on the mean emotion state of the stream's frames so far."""
        s = self._get(sid)
        if s.emotion_sum is None:
            return None
        with torch.inference_mode():
            logits = self.model.emotion_encoder.classify(s.emotion_sum / s.emotion_frames)
        return logits[0].float().cpu().numpy()

    def pending(self) -> list[int]:
        """Streams whose next hop can run now."""
        return [sid for sid, s in self._streams.items() if self._ready(s) is not None]

    # --- compute ----------------------------------------------------------------------------
    def step(self) -> dict[int, np.ndarray]:
        """Advance every ready stream by one hop in one batched forward per hop length ->
        {stream id: its new frames, float32 [k, 52]} (streams that did not advance are absent).
        Raises StepFailed when a group's forward raised (see the module's docstring)."""
        out, failed = {}, {}
        for group in self._plan():
            try:
                result = self._run(group)
            except Exception as e:  # noqa: BLE001 - this group's streams fail; the others go on
                failed.update((sid, e) for sid, _ in group)
                continue
            out.update(self._commit(group, *result))
        if failed:
            raise StepFailed(out, failed)
        return out

    def _plan(self) -> list[list[tuple[int, Window]]]:
        """Every ready stream's next window, grouped by hop length (one forward per group)."""
        groups: dict[int, list[tuple[int, Window]]] = {}
        for sid, s in self._streams.items():
            w = self._ready(s)
            if w is not None:
                groups.setdefault(w.h1 - w.h0, []).append((sid, w))
        return list(groups.values())

    def _ready(self, s: _Stream) -> Window | None:
        """The stream's next window if it can run now, else None."""
        if s.ending:
            if s.next_hop * self.encoder.hop >= s.total_frames:
                return None
            return self.encoder.window(s.next_hop, s.total_frames, s.received)
        w = self.encoder.window(s.next_hop)
        return w if w.s1 <= s.received else None

    def _run(self, batch: list[tuple[int, Window]]) -> tuple[np.ndarray, torch.Tensor]:
        """One group's forward -> (frames [B, hop, 52], emotion state sums [B, 2, hidden]: over
        the hop, over the window). Reads
        the streams' state and changes none of it (it writes their KV rows at positions the
        streams have not reached yet, which a retry would write again)."""
        streams = [self._streams[sid] for sid, _ in batch]
        windows = [w for _, w in batch]
        samples = [torch.from_numpy(s.buffer[w.s0 - s.buffer_start : w.s1 - s.buffer_start]) for s, w in
                   zip(streams, windows)]
        slots = [s.slot for s in streams]
        starts = [s.next_hop * self.encoder.hop for s in streams]  # where each stream's frames go in its slot
        hop = windows[0].h1 - windows[0].h0
        static = self.cuda_graphs and hop == self.encoder.hop
        level, person = self._style_rows(streams, windows, per_frame=static)
        with torch.inference_mode():
            if static:
                blendshapes, emotion_sums = self._run_static(samples, windows, level, person, slots, starts)
            else:
                inputs = self.encoder.batch_inputs([x.to(self.device) for x in samples], windows)
                blendshapes, emotion_sums = self._hop(**inputs, level=level, person=person, slots=slots,
                                                      starts=torch.tensor(starts),
                                                      span=min(self.cache.capacity, max(starts) + hop))
            # copies: a graph's outputs are overwritten by its next replay
            return blendshapes[: len(batch)].float().cpu().numpy(), emotion_sums[: len(batch)].clone()

    def _commit(self, batch: list[tuple[int, Window]], frames: np.ndarray, emotion_sums: torch.Tensor):
        """A group's forward succeeded: advance its streams -> {stream id: its new frames}."""
        out = {}
        for b, (sid, w) in enumerate(batch):
            s = self._streams[sid]
            hop_sum, window_sum = emotion_sums[b, :1], emotion_sums[b, 1:]
            s.emotion_sum = hop_sum if s.emotion_sum is None else s.emotion_sum + hop_sum
            s.emotion_frames += w.h1 - w.h0
            if s.ending and w.t0 == 0 and w.t1 == s.total_frames:
                # the last window holds the whole utterance: its label as offline animation's,
                # from every frame's state seen with the whole utterance (the label is trained
                # on whole utterances; a frame's state seen without the end can differ widely)
                s.emotion_sum, s.emotion_frames = window_sum, w.t1 - w.t0
            s.next_hop += 1
            self._trim(s)
            out[sid] = np.ascontiguousarray(frames[b])
        return out

    def time_steady_hop(self, streams: int, repeats: int = 3) -> float:
        """Seconds one batched hop of `streams` streams takes at this engine's settings, in the
        steady state (every window full length; noise audio), the fastest of `repeats`. Runs
        `_hop` on a scratch engine of its own: no live stream is touched."""
        if streams < 1 or repeats < 1:
            raise InvalidInput(f"streams and repeats must be >= 1, got {streams}, {repeats}")
        w = self.encoder.window(self.encoder.context // self.encoder.hop + 1)  # a steady window (t0 > 0)
        scratch = StreamEngine(self.model, self.device, self.dtype, max_streams=streams, hop_ms=self.hop_ms,
                               lookahead_ms=self.lookahead_ms, context_ms=self.context_ms,
                               max_cache_s=(w.h1 + 1) / FPS)
        noise = torch.from_numpy(np.random.default_rng(0).standard_normal(w.s1 - w.s0).astype(np.float32) * 0.1)
        dec = self.model.cfg.decoder
        level, person = (torch.zeros(streams, n, dtype=self.dtype) for n in (dec.num_levels, dec.num_persons))
        best = float("inf")
        with torch.inference_mode():
            for run in range(repeats + 1):  # the first run warms up
                t0 = time.perf_counter()
                inputs = self.encoder.batch_inputs([noise.to(self.device)] * streams, [w] * streams)
                blendshapes, _ = scratch._hop(**inputs, level=level, person=person, slots=list(range(streams)),
                                              starts=torch.full((streams,), w.h0), span=w.h1)
                blendshapes.float().cpu()
                best = min(best, time.perf_counter() - t0) if run else best
        return best

    def prepare_static_hops(self) -> None:
        """Build every batch bucket's static hop now (on CUDA: capture its graph, seconds for the
        release-size model), so that no live stream waits on a capture later."""
        if not self.cuda_graphs:
            raise RuntimeError("prepare_static_hops() needs an engine made with cuda_graphs=True")
        w = self.encoder.window(self.encoder.context // self.encoder.hop + 1)  # a steady window, in silence
        dec = self.model.cfg.decoder
        level, person = (torch.zeros(1, w.h1 - w.h0, n, dtype=self.dtype) for n in (dec.num_levels, dec.num_persons))
        with torch.inference_mode():
            for bucket in self.buckets:
                self._static_hop(bucket, self._static_inputs(bucket, [torch.zeros(w.s1 - w.s0)], [w], level, person,
                                                             [self._scratch_slot], [0]))

    def _run_static(self, samples, windows, level, person, slots: list[int], starts: list[int]):
        """The hop padded to its bucket's static shapes, through that bucket's StaticHop."""
        bucket = next(b for b in self.buckets if b >= len(windows))
        inputs = self._static_inputs(bucket, samples, windows, level, person, slots, starts)
        return self._static_hop(bucket, inputs)(inputs)

    def _static_inputs(self, bucket: int, samples, windows, level, person, slots: list[int], starts: list[int]):
        pad = bucket - len(windows)
        inputs = self.encoder.batch_inputs(samples, windows, pad_to=(bucket, *self.encoder.longest))
        inputs.update(level=_pad_rows(level, bucket), person=_pad_rows(person, bucket),
                      slots=torch.tensor(slots + [self._scratch_slot] * pad), starts=torch.tensor(starts + [0] * pad))
        return inputs

    def _static_hop(self, bucket: int, inputs: dict) -> StaticHop:
        """The bucket's StaticHop, built on first use from these inputs' shapes."""
        if bucket not in self._static_hops:
            # captured on a batch of padding rows only: warm-up runs touch no stream's cache
            example = dict(inputs, slots=torch.full_like(inputs["slots"], self._scratch_slot))
            # a weak reference: the engine owns its hops, and a hop holding the engine back would make
            # a cycle that keeps the model's memory until the garbage collector happens to run
            engine = weakref.ref(self)
            self._static_hops[bucket] = StaticHop(lambda x: engine()._hop(**x, span=engine().cache.capacity),
                                                  example, self.device, self._graph_pool)
        return self._static_hops[bucket]

    def _hop(self, *, level, person, slots, starts, span: int, **windows):
        """One batched hop: both encoders over the windows, one decoder step over the slots'
        rings -> blendshapes [B, hop, 52], the emotion states summed over the hop and over the
        whole window, [B, 2, hidden]. Tensors in, tensors out, nothing read back to the host:
        the function a CUDA graph captures."""
        content, emotion, window_sum = self.encoder.encode_inputs(**windows)
        level, person = level.to(self.device), person.to(self.device)
        x, memory = self.model.decoder_inputs(content, emotion, level, person)
        out = self.model.decoder.step_at(x, memory, self.cache, slots, starts.to(self.device), span)
        return self.model.blendshape_head(out), torch.cat([emotion.sum(1, keepdim=True), window_sum], 1)

    def _style_rows(self, streams: list[_Stream], windows: list[Window], per_frame: bool = False):
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

    def _trim(self, s: _Stream) -> None:
        """Drop samples no future window of the stream reads, so memory does not grow."""
        keep_from = self.encoder.window(s.next_hop).s0
        if keep_from > s.buffer_start:
            s.buffer = s.buffer[keep_from - s.buffer_start :].copy()
            s.buffer_start = keep_from


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


def _append(s: _Stream, chunk: np.ndarray) -> None:
    if chunk.size:
        s.buffer = np.concatenate([s.buffer, chunk])
        s.received += chunk.size


def validate_chunk(samples) -> np.ndarray:
    """A pushed chunk -> float32 [n], or TypeError/ValueError saying what was wrong."""
    if isinstance(samples, torch.Tensor):
        if not samples.is_floating_point():
            raise InvalidType(f"stream samples must be floating point, got {samples.dtype}")
        samples = samples.detach().cpu().float().numpy()
    if not isinstance(samples, np.ndarray):
        if isinstance(samples, (list, tuple)):
            samples = np.asarray(samples, dtype=np.float32)
        else:
            raise InvalidType(f"stream samples must be a numpy array or torch tensor, got {type(samples).__name__}")
    if samples.dtype.kind != "f":
        raise InvalidType(f"stream samples must be floating point in [-1, 1], got dtype {samples.dtype}")
    if samples.ndim != 1:
        raise InvalidInput(f"stream samples must be mono [n], got shape {list(samples.shape)}")
    if not np.isfinite(samples).all():
        raise InvalidInput(f"chunk has {int((~np.isfinite(samples)).sum())} NaN or infinite samples; "
                           "it was not added (the stream is unchanged)")
    return samples.astype(np.float32, copy=False)
