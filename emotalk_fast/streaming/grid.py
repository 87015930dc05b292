"""The fixed 30 fps grid and the windows both encoders read: pure arithmetic (on integers, or on
index tensors for a batch), no model.

Output frame t reads CNN position 5t/3 (50 Hz -> 30 fps); hops, lookahead and context are
multiples of 100 ms, where both grids coincide. Each hop's frames are encoded from a window
of `context` before the hop, the hop, and `lookahead` after it. With a ramp, hops of 100, 200,
400, ... ms come first, doubling up to the hop: a stream's first frames then wait for 100 ms of
audio and the lookahead, not for a whole hop. The emotion branch may have windows and a cadence
of its own: its window ends where the hop's does, and its states are kept from the hop's start
to the window's end, so the next hops read theirs from it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import InvalidInput
from ..model.config import ENCODER_FPS, FPS, SAMPLE_RATE, EmoTalkConfig
from .settings import GRID_MS, StreamSettings

_UP, _DOWN = ENCODER_FPS // 10, FPS // 10  # CNN position of output frame t = 5t / 3
_GRID_FRAMES = FPS * GRID_MS // 1000  # output frames per 100 ms (3)


def cnn_frame(t: int) -> int:
    """The CNN frame at or before output frame t's position 5t/3."""
    return _UP * t // _DOWN


def grid_indices(t: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Output frames t [B, n] (absolute) -> (i0, i1, frac): the two CNN frames each reads around
    its position 5t/3, counted from each row's first CNN frame lo [B, 1] and clamped to its last
    hi [B, 1], and the weight of the second [B, n, 1] (thirds)."""
    pos0 = torch.div(_UP * t, _DOWN, rounding_mode="floor")
    return torch.minimum(pos0, hi) - lo, torch.minimum(pos0 + 1, hi) - lo, ((_UP * t) % _DOWN / _DOWN)[..., None]


def frames_of(ms: int) -> int:
    """Output frames in `ms` (a multiple of 100 ms)."""
    return ms // GRID_MS * _GRID_FRAMES


@dataclass(frozen=True)
class Window:
    """Hop frames [h0, h1) encoded from window frames [t0, t1) read off samples [s0, s1)."""

    t0: int
    h0: int
    h1: int
    t1: int
    c_lo: int  # first CNN frame of the window (absolute)
    c_hi: int  # last CNN frame the window needs (absolute)
    s0: int
    s1: int


@dataclass(frozen=True)
class NewRows:
    """Where an incremental hop's new rows (frames [h0, t1)) read their CNN input in its window:
    from CNN frame `first` (absolute), `offset` samples into the window, to the window's end
    (`samples` long)."""

    first: int
    offset: int
    samples: int


class StreamGrid:
    """Where each hop's frames, windows and samples lie for one setting and one CNN front end."""

    def __init__(self, settings: StreamSettings, stride: int = SAMPLE_RATE // ENCODER_FPS, field: int = 400):
        self.settings = settings
        self.hop = frames_of(settings._concrete())
        self.lookahead = frames_of(settings.lookahead_ms)
        self.context = frames_of(settings.context_ms)
        self.emotion_context = frames_of(settings.emotion_context)
        self.emotion_hop = frames_of(settings.emotion_hop)
        self.separate_emotion = settings.separate_emotion
        self.ramp = bool(settings.ramp)
        # with a ramp, the hops of 100, 200, 400, ... ms shorter than the hop come first
        self._ramp_hops = sum(1 for i in range(32) if _GRID_FRAMES << i < self.hop) if self.ramp else 0
        self.stride, self.field = stride, field  # samples per CNN frame (320), under one frame (400)
        if stride * ENCODER_FPS != SAMPLE_RATE:
            raise InvalidInput("streaming assumes a 50 Hz CNN front end")

    @classmethod
    def for_model(cls, settings: StreamSettings, cfg: EmoTalkConfig) -> StreamGrid:
        """The grid of a model's front end (both encoders must share it)."""
        enc = cfg.content
        if (enc.conv_stride, enc.conv_kernel) != (cfg.emotion.conv_stride, cfg.emotion.conv_kernel):
            raise InvalidInput("streaming needs both encoders to share one CNN frame grid")
        return cls(settings, int(np.prod(enc.conv_stride)), enc.receptive_field)

    def start(self, k: int) -> int:
        """The first frame of hop k."""
        ramp = min(k, self._ramp_hops)
        return _GRID_FRAMES * ((1 << ramp) - 1) + (k - ramp) * self.hop

    def steady(self) -> int:
        """The first hop whose windows (both branches') are full length: past the ramp and
        both contexts."""
        k = self._ramp_hops
        while self.start(k) <= max(self.context, self.emotion_context):
            k += 1
        return k

    def hops(self, total_frames: int) -> int:
        """How many hops cover `total_frames` frames."""
        k = 0
        while k < self._ramp_hops and self.start(k) < total_frames:
            k += 1
        return k + max(0, -(-(total_frames - self.start(k)) // self.hop))

    def window(self, k: int, total_frames: int | None = None, total_samples: int | None = None,
               context: int | None = None) -> Window:
        """Hop k's window (`context` frames before the hop: default the content's); with the clip's
        totals (at the end of a stream) it is clipped to them."""
        h0, h1 = self.start(k), self.start(k + 1)
        t0, t1 = max(0, h0 - (self.context if context is None else context)), h1 + self.lookahead
        if total_frames is not None:
            h1, t1 = min(h1, total_frames), min(t1, total_frames)
        c_lo = cnn_frame(t0)
        c_hi = -(-_UP * (t1 - 1) // _DOWN)  # ceil: the right neighbour of the last position
        if total_samples is not None:
            last = (total_samples - self.field) // self.stride  # last CNN frame of the clip
            c_lo, c_hi = min(c_lo, last), min(c_hi, last)
        s0, s1 = self.stride * c_lo, self.stride * c_hi + self.field
        return Window(t0, h0, h1, t1, c_lo, c_hi, s0, s1)

    def new_rows(self, w: Window) -> NewRows:
        """The samples window w's new rows read (incremental encoding): their first CNN frame's on."""
        first = min(cnn_frame(w.h0), w.c_hi)
        return NewRows(first, self.stride * (first - w.c_lo), self.stride * (w.c_hi - first) + self.field)

    def emotion_window(self, k: int, total_frames: int | None = None, total_samples: int | None = None) -> Window:
        """Hop k's emotion window: `emotion_context` before the hop, ending where the hop's window
        ends; its 'hop' is every frame from the hop's start to the window's end (the states kept)."""
        w = self.window(k, total_frames, total_samples, self.emotion_context)
        return replace(w, h1=w.t1)

    def holds_emotion(self, first: int, n: int, w: Window, any_age: bool = False) -> bool:
        """Whether kept emotion states for frames first .. first + n - 1 serve hop window w: they
        cover it and (unless `any_age`: the whole utterance's) were computed less than an emotion
        hop before it. Else the hop runs an emotion window of its own."""
        return first <= w.h0 and w.h1 <= first + n and (any_age or w.h0 - first < self.emotion_hop)

    @property
    def longest(self) -> tuple[int, int]:
        """(frames, samples) of the longest window: every window of this grid fits in it."""
        w = self.window(self.steady())
        return w.t1 - w.t0, w.s1 - w.s0
