"""Many streams, one model: streams come and go, and `step()` advances every ready one by a hop.

A step is plan -> run -> commit (vLLM v1's engine core: schedule, execute, update from output).
The scheduler (scheduler.py) groups the ready streams' next hops by length and says where each
row's emotion states come from; the executor (executor.py) runs each group as one padded, masked
batch of both encoders and one decoder step over the streams' KV rings, and changes no stream
state; only a group whose forward succeeded commits (next hops, emotion sums, kept states,
buffers). A group that raises fails its own streams only, unchanged, and `step()` raises
StepFailed after every other group has committed, carrying their frames. Errors in one stream's
input raise in that stream's call and leave every other stream, and the stream itself, unchanged.

A stream's frames do not depend on what shares its batch: rows of a padded batch are computed
independently (tested against a stream alone within 1e-5).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInput
from ..io.audio import StreamingResampler, check_rate
from ..model.config import FPS, SAMPLE_RATE
from ..model.emotalk import EmoTalk, num_frames
from ..model.style import check_style
from .backend import DEFAULT, EncoderBackend
from .executor import Executor, HopResult
from .grid import StreamGrid
from .scheduler import EmotionPolicy, GroupPlan, Scheduler
from .settings import MAX_STREAMS, StreamSettings
from .streams import StreamState, validate_chunk


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


class StreamEngine:
    """Up to `max_streams` concurrent streams over one model, advanced together by `step()`.

    >>> engine = StreamEngine(animator.model, "cpu", torch.float32, StreamSettings(), max_streams=8)
    >>> a = engine.open(level=1, person=0, sample_rate=48000)
    >>> engine.push(a, chunk)                 # any sizes, any time
    >>> frames = engine.step()                # {stream id: float32 [k, 52]} for streams that advanced
    >>> engine.flush(a)                       # the end of a's audio; later steps emit its last frames
    >>> engine.close(a)                       # frees its slot

    settings: a concrete hop (resolve "auto" first: `Animator.engine` does). cuda_graphs: static
    shapes for every full hop, on CUDA each batch bucket's hop a captured graph (executor.py);
    `prepare_static_hops()` builds them all up front. encoders: the encoder backend (the
    Animator's; default the model's encoders as they are).
    """

    def __init__(self, model: EmoTalk, device, dtype, settings: StreamSettings | None = None, *,
                 max_streams: int = MAX_STREAMS, cuda_graphs: bool = False, encoders: EncoderBackend = DEFAULT):
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise InvalidInput(f"max_streams must be a positive integer, got {max_streams!r}")
        settings = StreamSettings() if settings is None else settings
        if not isinstance(settings, StreamSettings):
            raise InvalidInput(f"settings must be a StreamSettings, got {type(settings).__name__}")
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.settings, self.max_streams = settings, max_streams
        self.grid = StreamGrid.for_model(settings, model.cfg)
        self.policy = EmotionPolicy(self.grid, model.cfg, settings.whole_utterance_ms)
        self.scheduler = Scheduler(self.grid, self.policy, bool(cuda_graphs))
        self.max_cache_frames = max(int(settings.max_cache_s * FPS), self.grid.hop)
        self.encoders = encoders
        self.executor = Executor(model, self.device, dtype, self.grid, max_streams, self.max_cache_frames,
                                 cuda_graphs, encoders)
        self._streams: dict[int, StreamState] = {}
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
        self._streams[sid] = StreamState(slot, rate, resampler, level, person, style, style)
        return sid

    def reset(self, sid: int, level=None, person=None) -> None:
        """Start a new utterance on the same stream (same slot and rate), optionally restyled."""
        s = self._get(sid)
        level = s.level if level is None else level
        person = s.person if person is None else person
        style = check_style(self.model.cfg, level, person)
        if s.resampler is not None:
            s.resampler.reset()
        self._streams[sid] = StreamState(s.slot, s.sample_rate, s.resampler, level, person, style, style)

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

    def _get(self, sid: int) -> StreamState:
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
        s.append(chunk if s.resampler is None else s.resampler.push(chunk))

    def flush(self, sid: int) -> None:
        """The end of the stream's audio: the next steps emit its remaining frames, the last
        windows cut at the audio's end (as many frames in all as offline animation gives)."""
        s = self._get(sid)
        if s.ending:
            raise RuntimeError("flush() called twice: call reset() to start a new utterance")
        if s.resampler is not None:
            s.append(s.resampler.flush())
        n = s.received
        if n and n < self.grid.field:
            raise InvalidInput(f"the audio is too short to animate: {1000 * n / SAMPLE_RATE:.1f} ms "
                               f"(at least {1000 * self.grid.field / SAMPLE_RATE:g} ms)")
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
        start = self.grid.start(s.next_hop)
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
        latency = self.settings.latency_ms / 1000
        s = self._get(sid)
        r = s.resampler
        if r is not None:  # 16 kHz sample j needs input up to its filter's end
            last = self.grid.window(self.grid.steady() + 1).s1  # the last sample a steady hop reads
            newest_input = ((last - 1 + r.first) * r.down) // r.up
            latency += (newest_input + 1) / s.sample_rate - last / SAMPLE_RATE
        return round(1000.0 * latency, 1)  # 0.1 ms: finer than any clock it is compared with

    def frames_emitted(self, sid: int) -> int:
        s = self._get(sid)
        start = self.grid.start(s.next_hop)
        return min(start, s.total_frames) if s.ending else start

    def finished(self, sid: int) -> bool:
        """Flushed and every frame emitted."""
        s = self._get(sid)
        return s.ending and self.grid.start(s.next_hop) >= s.total_frames

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
        return [sid for sid, s in self._streams.items() if self.scheduler.ready(s) is not None]

    # --- compute ----------------------------------------------------------------------------
    def step(self) -> dict[int, np.ndarray]:
        """Advance every ready stream by one hop in one batched forward per hop length ->
        {stream id: its new frames, float32 [k, 52]} (streams that did not advance are absent).
        Raises StepFailed when a group's forward raised (see the module's docstring)."""
        out, failed = {}, {}
        for plan in self.scheduler.plan(self._streams):
            try:
                result = self.executor.run(plan, [self._streams[sid] for sid in plan.sids])
            except Exception as e:  # noqa: BLE001 - this group's streams fail; the others go on
                failed.update((sid, e) for sid in plan.sids)
                continue
            out.update(self._commit(plan, result))
        if failed:
            raise StepFailed(out, failed)
        return out

    def _commit(self, plan: GroupPlan, result: HopResult) -> dict[int, np.ndarray]:
        """A group's forward succeeded: advance its streams -> {stream id: its new frames}."""
        out = {}
        for b, row in enumerate(plan.rows):
            s, w = self._streams[row.sid], row.window
            sums = result.emotion_sums[b]
            s.emotion_sum = sums if s.emotion_sum is None else s.emotion_sum + sums
            s.emotion_frames += w.h1 - w.h0
            self.executor.keep_encoded(s.slot, s.encoded_rows, result, b)
            s.encoded_rows += w.h1 - w.h0
            run = result.emotion_runs.get(b)
            if run is not None:
                s.emotion_kept, s.kept_from = run.states, run.first
                s.label_logits = s.label_logits if run.logits is None else run.logits
            s.next_hop += 1
            self._trim(s)
            out[row.sid] = np.ascontiguousarray(result.frames[b])
        return out

    def _trim(self, s: StreamState) -> None:
        """Drop samples no future window of the stream reads, so memory does not grow; an
        utterance that may yet end within `whole_utterance_ms` is kept whole."""
        if self.policy.keeps_whole(s):
            return
        # the last windows of a clip start earlier than their grid says (cut at the last whole CNN
        # frame, up to a frame and a field before): keep that much more
        margin = self.grid.stride + self.grid.field
        keep_from = min(self.grid.window(s.next_hop).s0, self.grid.emotion_window(s.next_hop).s0) - margin
        if keep_from > s.buffer_start:
            s.buffer = s.buffer[keep_from - s.buffer_start :].copy()
            s.buffer_start = keep_from

    # --- static shapes ----------------------------------------------------------------------
    def prepare_static_hops(self) -> None:
        """Build every batch bucket's static hop now (on CUDA: capture its graph)."""
        self.executor.prepare_static_hops()
