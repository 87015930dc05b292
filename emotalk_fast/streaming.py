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
   is not seen.
3. Normalisation: per window (zero mean, unit variance over the window's samples), not over
   the whole clip.
4. Emotion branch: encoded on the same 30 fps grid; offline it runs on int(L/50*30) frames and
   is resampled to T, which is the same grid up to rounding.
5. The CNN front end is recomputed per window, since per-window normalisation changes its
   input; it is not incremental.
6. Decoder: exact. A KV cache continues the offline decoder frame for frame, capped at
   `max_cache_s` seconds of history (a sliding window) so memory stays bounded.

`WindowedEncoder` is shared with offline animation of long clips, which uses larger hops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .audio import StreamingResampler, check_rate
from .config import ENCODER_FPS, FPS, SAMPLE_RATE
from .decoder import KVCache
from .controls import check_style
from .model import EmoTalk, normalize_waveform, num_frames

GRID_MS = 100  # the grids of 50 Hz CNN frames and 30 fps output frames coincide every 100 ms
_UP, _DOWN = ENCODER_FPS // 10, FPS // 10  # CNN position of output frame t = 5t / 3


def _frames_of(ms: int, name: str, allow_zero: bool) -> int:
    if isinstance(ms, bool) or not isinstance(ms, (int, np.integer)) or ms % GRID_MS or ms < 0 or \
            (ms == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} multiple of "
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
    """Both encoders over windows of context + hop + lookahead on the fixed 30 fps grid."""

    def __init__(self, model: EmoTalk, hop_ms: int, lookahead_ms: int, context_ms: int):
        self.model = model
        self.hop = _frames_of(hop_ms, "hop_ms", allow_zero=False)
        self.lookahead = _frames_of(lookahead_ms, "lookahead_ms", allow_zero=True)
        self.context = _frames_of(context_ms, "context_ms", allow_zero=True)
        enc = model.cfg.content
        if (enc.conv_stride, enc.conv_kernel) != (model.cfg.emotion.conv_stride, model.cfg.emotion.conv_kernel):
            raise ValueError("streaming needs both encoders to share one CNN frame grid")
        self.stride = int(np.prod(enc.conv_stride))  # samples per CNN frame (320)
        self.field = enc.receptive_field  # samples under one CNN frame (400)
        if self.stride * ENCODER_FPS != SAMPLE_RATE:
            raise ValueError("streaming assumes a 50 Hz CNN front end")

    def window(self, k: int, total_frames: int | None = None, total_samples: int | None = None) -> Window:
        """Hop k's window; with the clip's totals (at the end of a stream) it is clipped to them."""
        h0 = k * self.hop
        h1 = h0 + self.hop
        t0, t1 = max(0, h0 - self.context), h1 + self.lookahead
        if total_frames is not None:
            h1, t1 = min(h1, total_frames), min(t1, total_frames)
        c_lo = _UP * t0 // _DOWN
        c_hi = -(-_UP * (t1 - 1) // _DOWN)  # ceil: the right neighbour of the last position
        if total_samples is not None:
            last = (total_samples - self.field) // self.stride  # last CNN frame of the clip
            c_lo, c_hi = min(c_lo, last), min(c_hi, last)
        s0, s1 = self.stride * c_lo, self.stride * c_hi + self.field
        return Window(t0, h0, h1, t1, c_lo, c_hi, s0, s1)

    def encode(self, samples: torch.Tensor, w: Window):
        """Window samples [s1 - s0] (raw 16 kHz) -> content, emotion hidden [1, h1 - h0, hidden]."""
        # the offline normalisation over the window: statistics in float32 whatever the dtype
        lengths = torch.tensor([samples.shape[0]], device=samples.device)
        wave = normalize_waveform(samples[None].float(), lengths).to(self.model.content_map.weight.dtype)
        t = torch.arange(w.t0, w.t1, device=wave.device)
        pos0 = torch.div(_UP * t, _DOWN, rounding_mode="floor")
        frac = ((_UP * t) % _DOWN).to(wave.dtype) / _DOWN  # exact: thirds
        i0 = pos0.clamp(max=w.c_hi) - w.c_lo
        i1 = (pos0 + 1).clamp(max=w.c_hi) - w.c_lo
        hidden, feats = [], None
        for enc in (self.model.content_encoder, self.model.emotion_encoder):
            if feats is None or not self.model.shares_front_end:
                feats = enc.front_end(wave)[0]
            grid = feats[i0] * (1 - frac)[:, None] + feats[i1] * frac[:, None]
            hidden.append(enc.transformer(grid[None])[:, w.h0 - w.t0 : w.h1 - w.t0])
        return hidden[0], hidden[1]

    def hops(self, total_frames: int) -> int:
        return -(-total_frames // self.hop)


class AnimationStream:
    """Push mono samples at `sample_rate`, get the blendshape frames that became final.

    >>> stream = animator.stream(level=1, person=0, sample_rate=48000)
    >>> for chunk in microphone:            # any sizes
    ...     frames = stream.push(chunk)     # float32 [k, 52]
    >>> frames = stream.flush()             # the rest: as many frames as offline animation gives

    Another rate than 16 kHz is resampled as it arrives, to exactly the samples `animate`
    would resample the whole recording to (a streaming polyphase filter; its delay of a few
    ms is included in `latency_ms`).
    """

    def __init__(self, model: EmoTalk, device, dtype, level: int, person: int, *, hop_ms: int = 100,
                 lookahead_ms: int = 200, context_ms: int = 2000, max_cache_s: float = 600.0,
                 sample_rate: int = SAMPLE_RATE):
        self.model, self.device, self.dtype = model, device, dtype
        self.sample_rate = check_rate(sample_rate)
        self._resampler = None if self.sample_rate == SAMPLE_RATE else StreamingResampler(self.sample_rate,
                                                                                          SAMPLE_RATE)
        self.encoder = WindowedEncoder(model, hop_ms, lookahead_ms, context_ms)
        if not max_cache_s > 0:
            raise ValueError(f"max_cache_s must be > 0, got {max_cache_s!r}")
        self.max_cache_frames = int(max_cache_s * FPS)
        self.hop_ms, self.lookahead_ms, self.context_ms = hop_ms, lookahead_ms, context_ms
        self.level, self.person = level, person
        self.reset()

    # --- state ------------------------------------------------------------------------------
    def reset(self, level=None, person=None) -> None:
        """Start a new utterance, optionally with another level/person."""
        self.level = self.level if level is None else level
        self.person = self.person if person is None else person
        weights = check_style(self.model.cfg, self.level, self.person)
        self._style_from = self._style_to = weights
        self._fade_start, self._fade_frames = 0, 0
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # absolute index of _buffer[0]
        self._received = 0
        self._next_hop = 0
        self._cache = KVCache(self.max_cache_frames)
        self._emotion_sum = None
        self._emotion_frames = 0
        self._flushed = False
        if self._resampler is not None:
            self._resampler.reset()

    def set_style(self, level=None, person=None, crossfade_ms: float = 0.0) -> None:
        """Change level and/or person from the next frame not yet emitted, fading linearly over
        `crossfade_ms`. Any form `animate` takes (indices, a float level, person mixes)."""
        if not crossfade_ms >= 0:
            raise ValueError(f"crossfade_ms must be >= 0, got {crossfade_ms!r}")
        self.level = self.level if level is None else level
        self.person = self.person if person is None else person
        new = check_style(self.model.cfg, self.level, self.person)
        start = self._next_hop * self.encoder.hop
        self._style_from = self._style_at(start)
        self._style_to = new
        self._fade_start, self._fade_frames = start, int(round(crossfade_ms / 1000 * FPS))

    def _style_at(self, frame: int):
        if self._fade_frames == 0 or frame >= self._fade_start + self._fade_frames:
            return self._style_to
        a = max(0.0, (frame - self._fade_start) / self._fade_frames)
        return tuple((1 - a) * f + a * t for f, t in zip(self._style_from, self._style_to))

    def _style_weights(self, h0: int, h1: int):
        """Level and person weights for frames [h0, h1): [1, n] when constant, else [1, t, n]."""
        if self._fade_frames == 0 or h0 >= self._fade_start + self._fade_frames:
            rows = self._style_to
            return tuple(torch.as_tensor(r[None]).to(self.device, self.dtype) for r in rows)
        per_frame = [self._style_at(f) for f in range(h0, h1)]
        return tuple(torch.as_tensor(np.stack([p[i] for p in per_frame])[None]).to(self.device, self.dtype)
                     for i in range(2))

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: audio time from a frame's instant until the sample that makes it
        final arrives (the worst frame of a steady-state hop; compute time not included)."""
        k = self.encoder.context // self.encoder.hop + 2  # a hop past any start-up effect
        w = self.encoder.window(k)
        latency = w.s1 / SAMPLE_RATE - w.h0 / FPS
        if self._resampler is not None:  # 16 kHz sample j needs input up to its filter's end
            r = self._resampler
            newest_input = ((w.s1 - 1 + r.first) * r.down) // r.up
            latency += (newest_input + 1) / self.sample_rate - w.s1 / SAMPLE_RATE
        return 1000.0 * latency

    @property
    def frames_emitted(self) -> int:
        return self._next_hop * self.encoder.hop if not self._flushed else self._final_frames

    @property
    def emotion_logits(self) -> np.ndarray | None:
        """The emotion classifier on the mean emotion state of the frames emitted so far."""
        if self._emotion_sum is None:
            return None
        with torch.inference_mode():
            logits = self.model.emotion_encoder.classify(self._emotion_sum / self._emotion_frames)
        return logits[0].float().cpu().numpy()

    # --- audio in, frames out ---------------------------------------------------------------
    def push(self, samples) -> np.ndarray:
        """Append mono float samples at `sample_rate`; return the frames that became final, [k, 52]."""
        if self._flushed:
            raise RuntimeError("push() after flush(): call reset() to start a new utterance")
        chunk = _validate_chunk(samples)
        if self._resampler is not None:
            chunk = self._resampler.push(chunk)
        self._append(chunk)
        out = []
        while True:
            w = self.encoder.window(self._next_hop)
            if w.s1 > self._received:
                break
            out.append(self._run_hop(w))
        return _stack(out, self.model.cfg.decoder.num_blendshapes)

    def _append(self, chunk: np.ndarray) -> None:
        self._buffer = np.concatenate([self._buffer, chunk]) if chunk.size else self._buffer
        self._received += chunk.size

    def flush(self) -> np.ndarray:
        """End the utterance: the remaining frames, the last windows cut at the audio's end."""
        if self._flushed:
            raise RuntimeError("flush() called twice: call reset() to start a new utterance")
        if self._resampler is not None:
            self._append(self._resampler.flush())
        n = self._received
        total = num_frames(n) if n else 0
        if n and n < self.encoder.field:
            raise ValueError(f"the utterance is too short to animate: {n} samples "
                             f"({1000 * n / SAMPLE_RATE:.1f} ms); call reset() and push more audio")
        out = []
        while self._next_hop * self.encoder.hop < total:
            out.append(self._run_hop(self.encoder.window(self._next_hop, total, n)))
        self._flushed, self._final_frames = True, total
        return _stack(out, self.model.cfg.decoder.num_blendshapes)

    def _run_hop(self, w: Window) -> np.ndarray:
        lo, hi = w.s0 - self._buffer_start, w.s1 - self._buffer_start
        samples = torch.from_numpy(self._buffer[lo:hi]).to(self.device)
        with torch.inference_mode():
            content, emotion = self.encoder.encode(samples, w)
            blendshapes, _ = self.model.decode_step(content, emotion, *self._style_weights(w.h0, w.h1), self._cache)
            self._emotion_sum = emotion.sum(1) if self._emotion_sum is None else self._emotion_sum + emotion.sum(1)
            self._emotion_frames += emotion.shape[1]
        self._next_hop += 1
        self._trim()
        return blendshapes[0].float().cpu().numpy()

    def _trim(self) -> None:
        """Drop samples no future window reads, so memory does not grow with the stream."""
        keep_from = self.encoder.window(self._next_hop).s0
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :].copy()
            self._buffer_start = keep_from


def _validate_chunk(samples) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        if not samples.is_floating_point():
            raise TypeError(f"stream samples must be floating point, got {samples.dtype}")
        samples = samples.detach().cpu().float().numpy()
    if not isinstance(samples, np.ndarray):
        if isinstance(samples, (list, tuple)):
            samples = np.asarray(samples, dtype=np.float32)
        else:
            raise TypeError(f"stream samples must be a numpy array or torch tensor, got {type(samples).__name__}")
    if samples.dtype.kind != "f":
        raise TypeError(f"stream samples must be floating point in [-1, 1], got dtype {samples.dtype}")
    if samples.ndim != 1:
        raise ValueError(f"stream samples must be mono [n], got shape {list(samples.shape)}")
    if not np.isfinite(samples).all():
        raise ValueError(f"chunk has {int((~np.isfinite(samples)).sum())} NaN or infinite samples; "
                         "it was not added (the stream is unchanged)")
    return samples.astype(np.float32, copy=False)


def _stack(frames: list[np.ndarray], width: int) -> np.ndarray:
    if not frames:
        return np.zeros((0, width), np.float32)
    return np.ascontiguousarray(np.concatenate(frames), dtype=np.float32)


def encode_windowed(model: EmoTalk, wave: torch.Tensor, hop_ms: int, lookahead_ms: int, context_ms: int,
                    progress=None):
    """A whole clip [N] through the stream's windows -> content, emotion hidden [1, T, hidden].

    Memory is that of one window, whatever the clip's length; the windows are exactly the
    ones a stream with the same settings would use.
    """
    encoder = WindowedEncoder(model, hop_ms, lookahead_ms, context_ms)
    n = wave.shape[0]
    total = num_frames(n)
    content, emotion = [], []
    hops = encoder.hops(total)
    for k in range(hops):
        w = encoder.window(k, total, n)
        c, e = encoder.encode(wave[w.s0 : w.s1], w)
        content.append(c)
        emotion.append(e)
        if progress is not None:
            progress(k + 1, hops)
    return torch.cat(content, 1), torch.cat(emotion, 1)
