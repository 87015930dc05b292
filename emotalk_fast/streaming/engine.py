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

import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..io.audio import StreamingResampler, check_rate
from ..model.config import FPS, SAMPLE_RATE
from ..model.style import check_style
from ..errors import InvalidInput, InvalidType
from ..model.emotalk import EmoTalk, normalize_waveform, num_emotion_frames, num_frames
from .windows import Window, WindowedEncoder


# Utterances up to this long are kept whole until they end, so that their label is offline's
# exactly: on the trained smoke model the stream's label then agrees with offline on 28 of 28
# clips, against 20 when only a window's worth is kept (docs/streaming.md). It costs 64 KB of
# samples per stream per second, and one emotion run over the utterance at its end.
WHOLE_UTTERANCE_MS = 4000
# Hops of 100, 200, 400, ... ms first, doubling up to the hop (windows.py): at long hops a
# stream's first frames wait for 100 ms of audio, not a whole hop. On the trained tiny model
# over the 28 smoke clips it kept every label and moved the curves no further from offline
# (at 400, 800, 1200 ms hops: 4.25, 3.72, 3.53 spreads against 4.37, 3.93, 3.66 without;
# docs/streaming.md). At 100 ms hops it changes nothing.
RAMP = True


def default_emotion_hop_ms(hop_ms: int, lookahead_ms: int) -> int:
    """The emotion branch runs as seldom as its lookahead allows: the largest multiple of the hop
    up to hop + lookahead (100 ms hops, 200 ms lookahead: every third hop)."""
    return hop_ms * (1 + lookahead_ms // hop_ms) if isinstance(hop_ms, int) and hop_ms > 0 else hop_ms


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
    emotion_ahead: torch.Tensor | None = None  # emotion states [n, hidden] already computed for frames ...
    ahead_from: int = 0  # ... ahead_from, ahead_from + 1, ...
    label_logits: torch.Tensor | None = None  # [labels]: the whole utterance's, as offline computes it

    def samples(self, w: Window) -> np.ndarray:
        """The window's samples [s1 - s0] from the buffer."""
        return self.buffer[w.s0 - self.buffer_start : w.s1 - self.buffer_start]

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

    emotion_context_ms, emotion_hop_ms: the emotion branch's own window and cadence (windows.py;
    default the content's context and `default_emotion_hop_ms`; the hop itself runs both
    branches on one window every hop, as before these existed). whole_utterance_ms: an
    utterance up to this long (default WHOLE_UTTERANCE_MS; 0: none) gets its label and the
    emotion states of its frames from its end on (the first hop only the end lets run) from the
    emotion encoder over the whole utterance, exactly as offline animation computes them, in
    place of that hop's windowed emotion run. ramp: the first hops 100, 200, 400, ... ms,
    doubling up to the hop (default RAMP; windows.py).

    cuda_graphs: static shapes for every full hop, on CUDA each batch bucket's hop a captured
    graph (see the module's docstring); `prepare_static_hops()` builds them all up front.
    """

    def __init__(self, model: EmoTalk, device, dtype, *, max_streams: int = 16, hop_ms: int = 100,
                 lookahead_ms: int = 200, context_ms: int = 2000, emotion_context_ms: int | None = None,
                 emotion_hop_ms: int | None = None, whole_utterance_ms: int = WHOLE_UTTERANCE_MS,
                 ramp: bool = RAMP, max_cache_s: float = 600.0, cuda_graphs: bool = False):
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise InvalidInput(f"max_streams must be a positive integer, got {max_streams!r}")
        if not max_cache_s > 0:
            raise InvalidInput(f"max_cache_s must be > 0, got {max_cache_s!r}")
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        emotion_context_ms = context_ms if emotion_context_ms is None else emotion_context_ms
        if isinstance(whole_utterance_ms, bool) or not isinstance(whole_utterance_ms, int) or whole_utterance_ms < 0:
            raise InvalidInput(f"whole_utterance_ms must be a non-negative integer, got {whole_utterance_ms!r}")
        if emotion_hop_ms is None:
            emotion_hop_ms = default_emotion_hop_ms(hop_ms, lookahead_ms)
        self.encoder = WindowedEncoder(model, hop_ms, lookahead_ms, context_ms, emotion_context_ms, emotion_hop_ms,
                                       ramp)
        self.ramp = self.encoder.ramp
        self.hop_ms, self.lookahead_ms, self.context_ms = hop_ms, lookahead_ms, context_ms
        self.emotion_context_ms, self.emotion_hop_ms = emotion_context_ms, emotion_hop_ms
        self.whole_utterance_ms = whole_utterance_ms
        self._whole_samples = whole_utterance_ms * SAMPLE_RATE // 1000  # kept whole until the end
        self.max_streams = max_streams
        self.max_cache_frames = max(int(max_cache_s * FPS), self.encoder.hop)
        self.cuda_graphs = bool(cuda_graphs)
        self.buckets = batch_buckets(max_streams)
        self._scratch_slot = max_streams  # padding rows of a static batch decode here
        _check_cache_fits(model, max_streams + self.cuda_graphs, self.max_cache_frames, self.device, dtype)
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
        start = self.encoder.start(s.next_hop)
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
        w = self.encoder.window(self.encoder.steady() + 1)  # a hop past any start-up effect
        latency = w.s1 / SAMPLE_RATE - w.h0 / FPS
        s = self._get(sid)
        r = s.resampler
        if r is not None:  # 16 kHz sample j needs input up to its filter's end
            newest_input = ((w.s1 - 1 + r.first) * r.down) // r.up
            latency += (newest_input + 1) / s.sample_rate - w.s1 / SAMPLE_RATE
        return round(1000.0 * latency, 1)  # 0.1 ms: finer than any clock it is compared with

    def frames_emitted(self, sid: int) -> int:
        s = self._get(sid)
        start = self.encoder.start(s.next_hop)
        return min(start, s.total_frames) if s.ending else start

    def finished(self, sid: int) -> bool:
        """Flushed and every frame emitted."""
        s = self._get(sid)
        return s.ending and self.encoder.start(s.next_hop) >= s.total_frames

    def emotion_logits(self, sid: int) -> np.ndarray | None:
        """The emotion classifier on the mean emotion state of the stream's frames so far; once
        an utterance of up to `whole_utterance_ms` has ended, offline animation's logits."""
        s = self._get(sid)
        if s.label_logits is not None:
            return s.label_logits.float().cpu().numpy()
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
            if self.encoder.start(s.next_hop) >= s.total_frames:
                return None
            return self.encoder.window(s.next_hop, *self._totals(s))
        w = self.encoder.window(s.next_hop)
        return w if w.s1 <= s.received else None

    def _run(self, batch: list[tuple[int, Window]]) -> tuple[np.ndarray, torch.Tensor, dict]:
        """One group's forward -> (frames [B, hop, 52], the hop's emotion state sums [B, 1, hidden],
        the emotion runs' results for `_commit`, see `_run_emotion`). Reads the streams' state and
        changes none of it (it writes their KV rows at positions the streams have not reached
        yet, which a retry would write again)."""
        streams = [self._streams[sid] for sid, _ in batch]
        windows = [w for _, w in batch]
        samples = [torch.from_numpy(s.samples(w)) for s, w in zip(streams, windows)]
        slots = [s.slot for s in streams]
        starts = [self.encoder.start(s.next_hop) for s in streams]  # where each stream's frames go in its slot
        hop = windows[0].h1 - windows[0].h0
        sources = [self._emotion_source(s, w) for s, w in zip(streams, windows)]
        joint = all(src == "joint" for src in sources)  # both branches on the same windows
        # static shapes hold one kind of hop: both branches (joint), or the content's with the
        # emotion states given (separate emotion branch)
        static = self.cuda_graphs and hop == self.encoder.hop and joint != self.encoder.separate_emotion
        level, person = self._style_rows(streams, windows, per_frame=static)
        ahead, emotion = {}, None
        with torch.inference_mode():
            if not joint:
                ahead = self._run_emotion(streams, sources)
                emotion = torch.stack([self.encoder.kept_for(*ahead.get(b, (s.emotion_ahead, s.ahead_from))[:2], w)
                                       for b, (s, w) in enumerate(zip(streams, windows))])
            if static:
                blendshapes, emotion_sums = self._run_static(samples, windows, level, person, slots, starts, emotion)
            else:
                inputs = self.encoder.batch_inputs([x.to(self.device) for x in samples], windows)
                blendshapes, emotion_sums = self._hop(**inputs, level=level, person=person, slots=slots,
                                                      starts=torch.tensor(starts),
                                                      span=min(self.cache.capacity, max(starts) + hop),
                                                      emotion=emotion)
            # copies: a graph's outputs are overwritten by its next replay
            return blendshapes[: len(batch)].float().cpu().numpy(), emotion_sums[: len(batch)].clone(), ahead

    def _emotion_source(self, s: _Stream, w: Window) -> str:
        """Where a hop's emotion states come from: "joint" (the hop's own windows, both branches
        at once), "window" (an emotion window run now), "ahead" (states an earlier run kept) or
        "whole" (the whole utterance, as offline)."""
        if self._whole_utterance_hop(s):
            return "whole"
        if s.emotion_ahead is not None and self.encoder.holds_emotion(s.ahead_from, len(s.emotion_ahead), w,
                                                                     any_age=s.label_logits is not None):
            return "ahead"
        return "window" if self.encoder.separate_emotion else "joint"

    def _whole_utterance_hop(self, s: _Stream) -> bool:
        """This hop runs the emotion branch over the whole utterance: it is the first hop only
        the utterance's end lets run (whenever flush() came: the frames do not depend on the
        timing), the buffer still holds the whole utterance, and it is long enough for the
        offline emotion path (45 ms, as `animate` requires)."""
        return (s.ending and s.label_logits is None and s.buffer_start == 0 and 0 < s.received <= self._whole_samples
                and self.encoder.window(s.next_hop).s1 > s.received
                and num_emotion_frames(self.model.cfg.emotion.num_cnn_frames(s.received)) >= 1)

    def _run_emotion(self, streams: list[_Stream], sources: list[str]) -> dict:
        """The emotion runs a hop needs -> {row: (states [n, hidden], first frame, label logits or
        None)}: one batched forward over the rows' emotion windows, and the whole-utterance rows
        one by one (rare: once per short utterance)."""
        ahead = {}
        rows = [b for b, src in enumerate(sources) if src in ("window", "joint")]  # joint: beside a "whole" row
        if rows:
            ws = [self.encoder.emotion_window(streams[b].next_hop, *self._totals(streams[b])) for b in rows]
            xs = [torch.from_numpy(streams[b].samples(w)).to(self.device) for b, w in zip(rows, ws)]
            (states,) = self.encoder.encode_inputs(**self.encoder.batch_inputs(xs, ws), branches=("emotion",))
            ahead.update((b, (states[i, : w.h1 - w.h0], w.h0, None)) for i, (b, w) in enumerate(zip(rows, ws)))
        for b in (b for b, src in enumerate(sources) if src == "whole"):
            s = streams[b]
            n = torch.tensor([s.received], device=self.device)
            wave = torch.from_numpy(s.buffer[: s.received]).to(self.device)[None]
            wave = normalize_waveform(wave, n).to(self.model.content_map.weight.dtype)
            hidden, logits = self.model.encode_emotion(wave, n, [s.total_frames])
            h0 = self.encoder.start(s.next_hop)
            ahead[b] = (hidden[0, h0:], h0, logits[0])
        return ahead

    @staticmethod
    def _totals(s: _Stream) -> tuple:
        return (s.total_frames, s.received) if s.ending else ()

    def _commit(self, batch: list[tuple[int, Window]], frames: np.ndarray, emotion_sums: torch.Tensor, ahead: dict):
        """A group's forward succeeded: advance its streams -> {stream id: its new frames}."""
        out = {}
        for b, (sid, w) in enumerate(batch):
            s = self._streams[sid]
            s.emotion_sum = emotion_sums[b] if s.emotion_sum is None else s.emotion_sum + emotion_sums[b]
            s.emotion_frames += w.h1 - w.h0
            if b in ahead:
                s.emotion_ahead, s.ahead_from, logits = ahead[b]
                s.label_logits = s.label_logits if logits is None else logits
            s.next_hop += 1
            self._trim(s)
            out[sid] = np.ascontiguousarray(frames[b])
        return out

    def time_steady_hop(self, streams: int, repeats: int = 3) -> tuple[float, float]:
        """Seconds one batched hop of `streams` streams takes at this engine's settings, in the
        steady state (every window full length; noise audio), the fastest of `repeats` -> (mean,
        peak): with an emotion branch of its own, the mean over its cadence (a hop without the
        emotion run plus the run's share) and the hop that runs it; else the same number twice.
        Runs `_hop` on a scratch engine of its own: no live stream is touched."""
        if streams < 1 or repeats < 1:
            raise InvalidInput(f"streams and repeats must be >= 1, got {streams}, {repeats}")
        # steady windows (t0 > 0) of both branches
        k = self.encoder.steady()
        w, ew = self.encoder.window(k), self.encoder.emotion_window(k)
        scratch = StreamEngine(self.model, self.device, self.dtype, max_streams=streams, hop_ms=self.hop_ms,
                               lookahead_ms=self.lookahead_ms, context_ms=self.context_ms,
                               emotion_context_ms=self.emotion_context_ms, emotion_hop_ms=self.emotion_hop_ms,
                               whole_utterance_ms=0, ramp=self.ramp, max_cache_s=(w.h1 + 1) / FPS)
        first = min(w.s0, ew.s0)  # the noise covers both windows, which end together
        noise = torch.from_numpy(np.random.default_rng(0).standard_normal(ew.s1 - first)
                                 .astype(np.float32) * 0.1).to(self.device)
        dec = self.model.cfg.decoder
        level, person = (torch.zeros(streams, n, dtype=self.dtype) for n in (dec.num_levels, dec.num_persons))
        separate = self.encoder.separate_emotion
        best = (float("inf"), float("inf"))
        with torch.inference_mode():
            for run in range(repeats + 1):  # the first run warms up
                t0 = time.perf_counter()
                emotion = None
                if separate:
                    x = noise[ew.s0 - first :]
                    (states,) = self.encoder.encode_inputs(**self.encoder.batch_inputs([x] * streams, [ew] * streams),
                                                           branches=("emotion",))
                    emotion_s = time.perf_counter() - t0
                    emotion = states[:, : self.encoder.hop]
                    t0 = time.perf_counter()
                inputs = self.encoder.batch_inputs([noise[w.s0 - first :]] * streams, [w] * streams)
                blendshapes, _ = scratch._hop(**inputs, level=level, person=person, slots=list(range(streams)),
                                              starts=torch.full((streams,), w.h0), span=w.h1, emotion=emotion)
                blendshapes.float().cpu()
                took = time.perf_counter() - t0
                if separate:
                    took = took + emotion_s * self.encoder.hop / self.encoder.emotion_hop, took + emotion_s
                else:
                    took = took, took
                best = min(best, took) if run else best
        return best

    def prepare_static_hops(self) -> None:
        """Build every batch bucket's static hop now (on CUDA: capture its graph, seconds for the
        release-size model), so that no live stream waits on a capture later."""
        if not self.cuda_graphs:
            raise RuntimeError("prepare_static_hops() needs an engine made with cuda_graphs=True")
        w = self.encoder.window(self.encoder.steady())  # a steady window, in silence
        dec = self.model.cfg.decoder
        level, person = (torch.zeros(1, w.h1 - w.h0, n, dtype=self.dtype) for n in (dec.num_levels, dec.num_persons))
        emotion = None
        if self.encoder.separate_emotion:
            emotion = torch.zeros(1, w.h1 - w.h0, self.model.cfg.emotion.hidden_size, dtype=self.dtype,
                                  device=self.device)
        with torch.inference_mode():
            for bucket in self.buckets:
                self._static_hop(bucket, self._static_inputs(bucket, [torch.zeros(w.s1 - w.s0)], [w], level, person,
                                                             [self._scratch_slot], [0], emotion))

    def _run_static(self, samples, windows, level, person, slots: list[int], starts: list[int], emotion=None):
        """The hop padded to its bucket's static shapes, through that bucket's StaticHop."""
        bucket = next(b for b in self.buckets if b >= len(windows))
        inputs = self._static_inputs(bucket, samples, windows, level, person, slots, starts, emotion)
        return self._static_hop(bucket, inputs)(inputs)

    def _static_inputs(self, bucket: int, samples, windows, level, person, slots: list[int], starts: list[int],
                       emotion=None):
        pad = bucket - len(windows)
        inputs = self.encoder.batch_inputs(samples, windows, pad_to=(bucket, *self.encoder.longest))
        inputs.update(level=_pad_rows(level, bucket), person=_pad_rows(person, bucket),
                      slots=torch.tensor(slots + [self._scratch_slot] * pad), starts=torch.tensor(starts + [0] * pad))
        if emotion is not None:  # the emotion states of a separate emotion branch
            inputs["emotion"] = _pad_rows(emotion, bucket)
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

    def _hop(self, *, level, person, slots, starts, span: int, emotion=None, **windows):
        """One batched hop: both encoders over the windows (only the content's when the hop's
        `emotion` states [B, hop, hidden] are given), one decoder step over the slots' rings ->
        blendshapes [B, hop, 52], the emotion states summed over the hop [B, 1, hidden]. Tensors
        in, tensors out, nothing read back to the host: the function a CUDA graph captures."""
        if emotion is None:
            content, emotion = self.encoder.encode_inputs(**windows)
        else:
            (content,) = self.encoder.encode_inputs(**windows, branches=("content",))
        level, person = level.to(self.device), person.to(self.device)
        x, memory = self.model.decoder_inputs(content, emotion, level, person)
        out = self.model.decoder.step_at(x, memory, self.cache, slots, starts.to(self.device), span)
        return self.model.blendshape_head(out), emotion.sum(1, keepdim=True)

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
        """Drop samples no future window of the stream reads, so memory does not grow; an
        utterance that may yet end within `whole_utterance_ms` is kept whole."""
        if s.received <= self._whole_samples:
            return
        keep_from = min(self.encoder.window(s.next_hop).s0, self.encoder.emotion_window(s.next_hop).s0)
        if keep_from > s.buffer_start:
            s.buffer = s.buffer[keep_from - s.buffer_start :].copy()
            s.buffer_start = keep_from


def _check_cache_fits(model: EmoTalk, slots: int, frames: int, device: torch.device, dtype) -> None:
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
