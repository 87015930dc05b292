"""Streaming: audio chunks in, final blendshape frames out, with bounded latency and memory.

The offline model resamples the whole clip's 50 Hz CNN features onto T output frames
(align_corners interpolation, so the grid depends on the clip's length) and runs bidirectional
encoders over everything. A stream cannot wait for the end, so it differs from offline in
exactly these places:

1. Fixed grid: output frame t reads CNN position 5t/3 (50 Hz -> 30 fps), the limit of the
   offline grid t * (L-1)/(T-1) for long clips. Hops of 100 ms (5 CNN frames, 3 output
   frames) keep both grids aligned, so hop, lookahead and context are multiples of 100 ms.
2. Windows: each hop's frames are encoded from a window of `context` before the hop, the hop,
   and `lookahead` after it; the encoders are bidirectional, so what lies outside the window
   is not seen. Incremental encoding (the default) encodes only the hop's new rows, over the
   keys and values earlier hops kept; windowed encoding re-encodes the whole window.
3. Normalisation: per window (zero mean, unit variance over the window's samples), not over
   the whole clip.
4. Emotion branch: encoded on the same 30 fps grid; offline it runs on int(L/50*30) frames and
   is resampled to T, which is the same grid up to rounding. It may have a window and cadence
   of its own (`emotion_context_ms`, `emotion_hop_ms`). An utterance up to
   `whole_utterance_ms` long gets its last frames' emotion states and its label exactly as
   offline: the emotion encoder over the whole utterance, once it has ended.
5. The CNN front end runs on the new rows' samples (incremental) or on the whole window
   (windowed), normalised over the window either way.
6. Decoder: exact. A KV cache continues the offline decoder frame for frame, capped at
   `max_cache_s` seconds of history (a sliding window) so memory stays bounded.

The windows (grid.py, encoders.py) are shared with offline animation of long clips.
`play` feeds a recording through a stream as a microphone would.
"""
from __future__ import annotations

import time

import numpy as np

from ..io.audio import check_rate
from ..model.config import FPS, SAMPLE_RATE
from ..model.emotalk import EmoTalk
from .backend import DEFAULT, EncoderBackend
from .engine import StepFailed, StreamEngine
from .settings import StreamSettings


class AnimationStream:
    """Push mono samples at `sample_rate`, get the blendshape frames that became final.

    >>> stream = animator.stream(level=1, person=0, sample_rate=48000)
    >>> for chunk in microphone:            # any sizes
    ...     frames = stream.push(chunk)     # float32 [k, 52]
    >>> frames = stream.flush()             # the rest: as many frames as offline animation gives

    Another rate than 16 kHz is resampled as it arrives, to exactly the samples `animate`
    would resample the whole recording to (a streaming polyphase filter; its delay of a few
    ms is included in `latency_ms`). A stream is an engine (engine.py) of one stream: many
    streams at once share one `StreamEngine` and get the same frames.
    """

    def __init__(self, model: EmoTalk, device, dtype, level: int, person: int,
                 settings: StreamSettings | None = None, *, sample_rate: int = SAMPLE_RATE,
                 cuda_graphs: bool = False, encoders: EncoderBackend = DEFAULT):
        self.sample_rate = check_rate(sample_rate)
        self.engine = StreamEngine(model, device, dtype, settings, max_streams=1, cuda_graphs=cuda_graphs,
                                   encoders=encoders)
        self.settings = self.engine.settings
        self._id = self.engine.open(level, person, self.sample_rate)
        self._flushed = False

    def __repr__(self) -> str:
        s = self.settings
        return (f"AnimationStream({self.sample_rate} Hz, hop {s.hop_ms} ms, lookahead {s.lookahead_ms} ms, "
                f"context {s.context_ms} ms, latency {self.latency_ms:.1f} ms, {self.frames_emitted} frames out)")

    @property
    def level(self):
        return self.engine.style(self._id)[0]

    @property
    def person(self):
        return self.engine.style(self._id)[1]

    def reset(self, level=None, person=None) -> None:
        """Start a new utterance, optionally with another level/person."""
        self.engine.reset(self._id, level, person)
        self._flushed = False

    def set_style(self, level=None, person=None, crossfade_ms: float = 0.0) -> None:
        """Change level and/or person from the next frame not yet emitted, fading linearly over
        `crossfade_ms`. Any form `animate` takes (indices, a float level, person mixes)."""
        self.engine.set_style(self._id, level, person, crossfade_ms)

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: audio time from a frame's instant until the sample that makes it
        final arrives (the worst frame of a steady-state hop; compute time not included)."""
        return self.engine.latency_ms(self._id)

    @property
    def frames_emitted(self) -> int:
        return self.engine.frames_emitted(self._id)

    @property
    def emotion_logits(self) -> np.ndarray | None:
        """The emotion classifier on the mean emotion state of the frames emitted so far; once an
        utterance of up to `whole_utterance_ms` has ended, offline animation's (engine.py)."""
        return self.engine.emotion_logits(self._id)

    def push(self, samples) -> np.ndarray:
        """Append mono float samples at `sample_rate`; return the frames that became final, [k, 52]."""
        if self._flushed:
            raise RuntimeError("push() after flush(): call reset() to start a new utterance")
        self.engine.push(self._id, samples)
        return self._drain()

    def flush(self) -> np.ndarray:
        """End the utterance: the remaining frames, the last windows cut at the audio's end."""
        if self._flushed:
            raise RuntimeError("flush() called twice: call reset() to start a new utterance")
        self.engine.flush(self._id)
        self._flushed = True
        return self._drain()

    def _drain(self) -> np.ndarray:
        """Every hop that can run now."""
        out = []
        while True:
            try:
                frames = self.engine.step().get(self._id)
            except StepFailed as e:  # an engine of one: its one stream's error
                raise e.failed[self._id]
            if frames is None:
                break
            out.append(frames)
        if not out:
            return np.zeros((0, self.engine.model.cfg.decoder.num_blendshapes), np.float32)
        return np.concatenate(out)


def first_frame_latency_s(first_frame: int, compute_s: float, wall_s: float, algorithmic_s: float,
                          realtime: bool) -> float:
    """How old a hop's first frame is when it comes out: on the wall clock in real time (the frame's
    instant is first_frame / FPS after the start), else the algorithmic latency plus the hop's
    compute."""
    return wall_s - first_frame / FPS if realtime else algorithmic_s + compute_s


def play(stream, samples: np.ndarray, hop_samples: int, realtime: bool = False, on_hop=None) -> np.ndarray:
    """Feed `samples` in hop-sized chunks as a microphone would; return every frame.

    on_hop(index, frames, compute_s, wall_s) is called after each push; with `realtime`, each
    chunk is pushed only once its last sample would have been spoken.
    """
    start = time.perf_counter()
    out = []
    for i, lo in enumerate(range(0, len(samples), hop_samples)):
        chunk = samples[lo : lo + hop_samples]
        if realtime:
            due = start + (lo + len(chunk)) / SAMPLE_RATE
            time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        frames = stream.push(chunk)
        if on_hop is not None:
            on_hop(i, frames, time.perf_counter() - t0, time.perf_counter() - start)
        out.append(frames)
    out.append(stream.flush())
    return np.concatenate(out)
