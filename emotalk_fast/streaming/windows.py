"""The fixed 30 fps grid and the windows both encoders read: shared by streaming (one hop at
a time) and by offline animation of long clips (larger hops).

Output frame t reads CNN position 5t/3 (50 Hz -> 30 fps); hops, lookahead and context are
multiples of 100 ms, where both grids coincide. Each hop's frames are encoded from a window
of `context` before the hop, the hop, and `lookahead` after it, normalised over the window.
With a ramp, hops of 100, 200, 400, ... ms come first, doubling up to the hop: a stream's
first frames then wait for 100 ms of audio and the lookahead, not for a whole hop.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from ..model.config import ENCODER_FPS, FPS, SAMPLE_RATE
from ..errors import InvalidInput
from ..model.emotalk import EmoTalk, normalize_waveform, num_frames

GRID_MS = 100  # the grids of 50 Hz CNN frames and 30 fps output frames coincide every 100 ms
_UP, _DOWN = ENCODER_FPS // 10, FPS // 10  # CNN position of output frame t = 5t / 3
_GRID_FRAMES = FPS * GRID_MS // 1000  # output frames per 100 ms (3)

# The two encoders of a window run at once, each on its own threads, where the CPU has cores for
# both (torch's threads x 2 <= cores): exact (the same operations, each on as many threads as
# before). A release-size steady hop (400 ms hop, 2 s of context) on a 2-core EPYC with one torch
# thread: 1.82 s one after the other, 1.00 s at once; both torch threads on one encoder at a time:
# 1.08 s, and 3.5 s while another process kept a core busy (at once: 1.7 s). 2026-12-01.
CONCURRENT_BRANCHES = True


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def branches_run_at_once(device: torch.device) -> bool:
    """Whether `encode_inputs` runs the content and emotion branches concurrently here."""
    return CONCURRENT_BRANCHES and device.type == "cpu" and 2 * torch.get_num_threads() <= _cores()


@lru_cache(maxsize=1)
def _second_branch_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="emotalk-emotion-branch")


if hasattr(os, "register_at_fork"):  # a forked child has no threads: it starts its own
    os.register_at_fork(after_in_child=_second_branch_thread.cache_clear)


def _frames_of(ms: int, name: str, allow_zero: bool) -> int:
    if isinstance(ms, bool) or not isinstance(ms, (int, np.integer)) or ms % GRID_MS or ms < 0 or \
            (ms == 0 and not allow_zero):
        raise InvalidInput(f"{name} must be a {'non-negative' if allow_zero else 'positive'} multiple of "
                           f"{GRID_MS} ms (it keeps the 50 Hz and 30 fps grids aligned), got {ms!r}")
    return ms // GRID_MS * (FPS * GRID_MS // 1000)


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


class WindowedEncoder:
    """Both encoders over windows of context + hop + lookahead on the fixed 30 fps grid.

    The emotion branch may have windows of its own (`emotion_context_ms`) and run once every
    `emotion_hop_ms` (a multiple of the hop, at most hop + lookahead): its window ends where the
    hop's does and its states are kept from the hop's start to the window's end, so the next
    hops read theirs from it, seen with less lookahead. Emotion changes slowly and the emotion
    encoder was trained on whole utterances, so a longer window run less often can cost less.
    """

    def __init__(self, model: EmoTalk, hop_ms: int, lookahead_ms: int, context_ms: int,
                 emotion_context_ms: int | None = None, emotion_hop_ms: int | None = None, ramp: bool = False):
        self.model = model
        self.hop = _frames_of(hop_ms, "hop_ms", allow_zero=False)
        self.ramp = bool(ramp)
        # with a ramp, the hops of 100, 200, 400, ... ms shorter than the hop come first
        self._ramp_hops = sum(1 for i in range(32) if _GRID_FRAMES << i < self.hop) if self.ramp else 0
        self.lookahead = _frames_of(lookahead_ms, "lookahead_ms", allow_zero=True)
        self.context = _frames_of(context_ms, "context_ms", allow_zero=True)
        self.emotion_context = self.context if emotion_context_ms is None else \
            _frames_of(emotion_context_ms, "emotion_context_ms", allow_zero=True)
        self.emotion_hop = self.hop if emotion_hop_ms is None else \
            _frames_of(emotion_hop_ms, "emotion_hop_ms", allow_zero=False)
        if self.emotion_hop % self.hop or self.emotion_hop > self.hop + self.lookahead:
            raise InvalidInput(f"emotion_hop_ms must be a multiple of hop_ms ({hop_ms}) and at most hop_ms + "
                               f"lookahead_ms ({hop_ms + lookahead_ms}: later hops read the states its window "
                               f"already holds), got {emotion_hop_ms!r}")
        # the emotion branch runs apart from the content branch (else both share each window)
        self.separate_emotion = (self.emotion_context, self.emotion_hop) != (self.context, self.hop)
        enc = model.cfg.content
        if (enc.conv_stride, enc.conv_kernel) != (model.cfg.emotion.conv_stride, model.cfg.emotion.conv_kernel):
            raise InvalidInput("streaming needs both encoders to share one CNN frame grid")
        self.stride = int(np.prod(enc.conv_stride))  # samples per CNN frame (320)
        self.field = enc.receptive_field  # samples under one CNN frame (400)
        if self.stride * ENCODER_FPS != SAMPLE_RATE:
            raise InvalidInput("streaming assumes a 50 Hz CNN front end")

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

    def window(self, k: int, total_frames: int | None = None, total_samples: int | None = None,
               context: int | None = None) -> Window:
        """Hop k's window (`context` frames before the hop: default the content's); with the clip's
        totals (at the end of a stream) it is clipped to them."""
        h0, h1 = self.start(k), self.start(k + 1)
        t0, t1 = max(0, h0 - (self.context if context is None else context)), h1 + self.lookahead
        if total_frames is not None:
            h1, t1 = min(h1, total_frames), min(t1, total_frames)
        c_lo = _UP * t0 // _DOWN
        c_hi = -(-_UP * (t1 - 1) // _DOWN)  # ceil: the right neighbour of the last position
        if total_samples is not None:
            last = (total_samples - self.field) // self.stride  # last CNN frame of the clip
            c_lo, c_hi = min(c_lo, last), min(c_hi, last)
        s0, s1 = self.stride * c_lo, self.stride * c_hi + self.field
        return Window(t0, h0, h1, t1, c_lo, c_hi, s0, s1)

    def holds_emotion(self, first: int, n: int, w: Window, any_age: bool = False) -> bool:
        """Whether kept emotion states for frames first .. first + n - 1 serve hop window w: they
        cover it and (unless `any_age`: the whole utterance's) were computed less than an emotion
        hop before it. Else the hop runs an emotion window of its own."""
        return first <= w.h0 and w.h1 <= first + n and (any_age or w.h0 - first < self.emotion_hop)

    @staticmethod
    def kept_for(states: torch.Tensor, first: int, w: Window) -> torch.Tensor:
        """Hop window w's frames of emotion states kept for frames first, first + 1, ... (frames
        on dim -2: [n, hidden] or [B, n, hidden])."""
        return states[..., w.h0 - first : w.h1 - first, :]

    def emotion_window(self, k: int, total_frames: int | None = None, total_samples: int | None = None) -> Window:
        """Hop k's emotion window: `emotion_context` before the hop, ending where the hop's window
        ends; its 'hop' is every frame from the hop's start to the window's end (the states kept)."""
        w = self.window(k, total_frames, total_samples, self.emotion_context)
        return replace(w, h1=w.t1)

    def encode(self, samples: torch.Tensor, w: Window):
        """Window samples [s1 - s0] (raw 16 kHz) -> content, emotion hidden [1, h1 - h0, hidden]."""
        return self.encode_batch([samples], [w])

    @property
    def longest(self) -> tuple[int, int]:
        """(frames, samples) of the longest window: every window of this encoder fits in it."""
        w = self.window(self.steady())
        return w.t1 - w.t0, w.s1 - w.s0

    def encode_batch(self, samples: list[torch.Tensor], windows: list[Window]):
        """Several windows (each its samples [s1 - s0], raw 16 kHz, and the same hop length) in
        one batched forward of both encoders -> content, emotion hidden [B, hop frames, hidden].

        Shorter windows are zero-padded and masked, so each row equals its own `encode` (the
        padded batch of the offline model, tested within 1e-5)."""
        return self.encode_inputs(**self.batch_inputs(samples, windows))

    def batch_inputs(self, samples: list[torch.Tensor], windows: list[Window], pad_to: tuple | None = None):
        """The tensors `encode_inputs` takes for these windows. The hidden states come out for
        the longest hop; a row with a shorter hop repeats its last frame. pad_to (rows, frames,
        samples): pad to exactly that shape, whatever the windows (static shapes for a CUDA
        graph); padding rows are silent windows that read nothing of the others."""
        hop = max(w.h1 - w.h0 for w in windows)
        frames = [w.t1 - w.t0 for w in windows]
        rows, n_frames, n_samples = pad_to or (len(windows), max(frames), max(len(s) for s in samples))
        wave = torch.zeros(rows, n_samples, device=samples[0].device)
        lengths = torch.full((rows,), n_samples)  # padding rows: all samples (silence) valid
        t = torch.zeros(rows, n_frames, dtype=torch.long)
        c_lo, c_hi = torch.zeros(rows, 1, dtype=torch.long), torch.zeros(rows, 1, dtype=torch.long)
        hop_rows = torch.arange(hop).repeat(rows, 1)
        for b, (s, w) in enumerate(zip(samples, windows)):
            wave[b, : len(s)] = s
            lengths[b] = len(s)
            t[b] = w.t0 + torch.arange(n_frames).clamp(max=w.t1 - w.t0 - 1)  # padding repeats the last frame
            c_lo[b], c_hi[b] = w.c_lo, w.c_hi
            hop_rows[b] = w.h0 - w.t0 + hop_rows[b].clamp(max=w.h1 - w.h0 - 1)
        pos0 = torch.div(_UP * t, _DOWN, rounding_mode="floor")
        valid = torch.full((rows,), n_frames)
        valid[: len(frames)] = torch.tensor(frames)
        return dict(wave=wave, lengths=lengths, i0=torch.minimum(pos0, c_hi) - c_lo,
                    i1=torch.minimum(pos0 + 1, c_hi) - c_lo, frac=((_UP * t) % _DOWN / _DOWN)[..., None],  # thirds
                    frames=None if pad_to is None and len(set(frames)) == 1 else valid, hop_rows=hop_rows)

    def encode_inputs(self, wave, lengths, i0, i1, frac, frames, hop_rows, branches=("content", "emotion")):
        """`batch_inputs`' tensors -> hidden [B, hop, hidden] of each branch asked for, in that
        order. Reads no value back to the host (a CUDA graph can capture it)."""
        device = self.model.content_map.weight.device
        wave, lengths, i0, i1, frac, hop_rows = (x.to(device) for x in (wave, lengths, i0, i1, frac, hop_rows))
        frames = None if frames is None else frames.to(device)
        # the offline normalisation over each window: statistics in float32 whatever the dtype
        wave = normalize_waveform(wave, lengths).to(self.model.content_map.weight.dtype)
        frac = frac.to(wave.dtype)
        rows = torch.arange(wave.shape[0], device=device)[:, None]
        encoders = {"content": self.model.content_encoder, "emotion": self.model.emotion_encoder}
        # a front end both encoders share runs once, before them
        feats = self.model.content_encoder.front_end(wave) if self.model.shares_front_end else None

        def branch(name: str) -> torch.Tensor:
            enc = encoders[name]
            f = enc.front_end(wave) if feats is None else feats
            grid = f[rows, i0] * (1 - frac) + f[rows, i1] * frac
            return enc.transformer(grid, frames)[rows, hop_rows]

        if len(branches) == 2 and branches_run_at_once(torch.device(device)):
            modes = torch.is_inference_mode_enabled(), torch.is_grad_enabled()  # both thread-local

            def second() -> torch.Tensor:
                with torch.inference_mode(modes[0]), torch.set_grad_enabled(modes[1]):
                    return branch(branches[1])

            later = _second_branch_thread().submit(second)
            return branch(branches[0]), later.result()
        return tuple(branch(name) for name in branches)

    def hops(self, total_frames: int) -> int:
        """How many hops cover `total_frames` frames."""
        k = 0
        while k < self._ramp_hops and self.start(k) < total_frames:
            k += 1
        return k + max(0, -(-(total_frames - self.start(k)) // self.hop))


def encode_windowed(model: EmoTalk, wave: torch.Tensor, hop_ms: int, lookahead_ms: int, context_ms: int,
                    progress=None, *, emotion_context_ms: int | None = None, emotion_hop_ms: int | None = None,
                    ramp: bool = False):
    """A whole clip [N] through the stream's windows -> content, emotion hidden [1, T, hidden].

    Memory is that of one window, whatever the clip's length; the windows are exactly the
    ones a stream with the same settings would use (the emotion branch on its own windows and
    cadence when given; a stream's whole-utterance rule at the end aside: engine.py).
    """
    encoder = WindowedEncoder(model, hop_ms, lookahead_ms, context_ms, emotion_context_ms, emotion_hop_ms, ramp)
    n = wave.shape[0]
    total = num_frames(n)
    content, emotion = [], []
    hops = encoder.hops(total)
    kept, first = None, 0  # the separate emotion branch's states for frames first, first + 1, ...
    for k in range(hops):
        w = encoder.window(k, total, n)
        if not encoder.separate_emotion:
            c, e = encoder.encode(wave[w.s0 : w.s1], w)
        else:
            (c,) = encoder.encode_inputs(**encoder.batch_inputs([wave[w.s0 : w.s1]], [w]), branches=("content",))
            if kept is None or not encoder.holds_emotion(first, kept.shape[1], w):
                ew = encoder.emotion_window(k, total, n)
                (kept,) = encoder.encode_inputs(**encoder.batch_inputs([wave[ew.s0 : ew.s1]], [ew]),
                                                branches=("emotion",))
                first = ew.h0
            e = encoder.kept_for(kept, first, w)
        content.append(c)
        emotion.append(e)
        if progress is not None:
            progress(k + 1, hops)
    return torch.cat(content, 1), torch.cat(emotion, 1)
