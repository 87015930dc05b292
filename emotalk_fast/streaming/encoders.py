"""How a hop's encoder states are made, behind one contract (`HopEncoder`) with two
implementations: windowed encoding here (both wav2vec2 encoders over the hop's window: context +
hop + lookahead, normalised over the window, read off the fixed 30 fps grid) and incremental
encoding (incremental.py: only the new rows, over rows kept from earlier hops).

Offline animation of long clips runs the same windows (`encode_windowed`), so a stream and the
long-audio path agree frame for frame at the same settings.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from ..model.emotalk import EmoTalk, num_frames
from ..runtime.threads import run_pair
from .grid import StreamGrid, Window, grid_indices
from .settings import StreamSettings

BRANCHES = ("content", "emotion")


class HopStates(NamedTuple):
    """A batch of hops through the encoders: each branch's hidden states of the hop's frames
    [B, hop, hidden] (None for a branch not asked for), and what the hop leaves to keep
    ({branch: EncodedRows}; None where the encoder keeps nothing)."""

    content: torch.Tensor | None
    emotion: torch.Tensor | None
    rows: dict | None = None


class HopEncoder(Protocol):
    """What the executor runs a hop's encoders through; the budget times the same calls."""

    keeps_rows: bool  # it keeps every hop's rows of both branches, so its hops run both

    @property
    def longest(self) -> tuple[int, ...]:
        """The padded shape of a full hop's inputs past the batch (static shapes)."""

    def batch_inputs(self, windows: list[Window], samples: list[torch.Tensor], kept: list[int] | None = None,
                     pad_to: tuple | None = None) -> dict:
        """The tensors `encode_inputs` takes for these hops (`samples`: each window's raw 16 kHz
        samples; `kept`: frames each stream kept so far); pad_to (rows, *longest): exactly that
        shape (padding rows are silence)."""

    def encode_inputs(self, *, slots: torch.Tensor, hop: int, branches=BRANCHES, **inputs) -> HopStates:
        """`batch_inputs`' tensors and the streams' slots -> HopStates. Changes no state and reads
        no value back to the host (a CUDA graph can capture it)."""

    def commit(self, slot: int, written: int, rows: dict | None, b: int) -> None:
        """Keep row b of a hop's `rows` for the stream in `slot`, which kept `written` frames before."""


def on_grid(feats: torch.Tensor, i0, i1, frac) -> torch.Tensor:
    """CNN features [B, L, C] read on the fixed 30 fps grid (50 Hz -> 30 fps) -> [B, n, C]."""
    rows = torch.arange(feats.shape[0], device=feats.device)[:, None]
    return feats[rows, i0] * (1 - frac) + feats[rows, i1] * frac


class WindowedEncoder:
    """Both encoders over windows of one `StreamGrid`, many windows in one padded batch (a
    HopEncoder that keeps nothing between hops)."""

    keeps_rows = False

    def __init__(self, model: EmoTalk, grid: StreamGrid):
        self.model, self.grid = model, grid

    @property
    def longest(self) -> tuple[int, int]:
        """(frames, samples) of the longest window."""
        return self.grid.longest

    def encode(self, samples: torch.Tensor, w: Window):
        """Window samples [s1 - s0] (raw 16 kHz) -> content, emotion hidden [1, h1 - h0, hidden]."""
        return self.encode_batch([samples], [w])

    def encode_batch(self, samples: list[torch.Tensor], windows: list[Window]):
        """Several windows (each its samples [s1 - s0], raw 16 kHz, and the same hop length) in
        one batched forward of both encoders -> content, emotion hidden [B, hop frames, hidden].

        Shorter windows are zero-padded and masked, so each row equals its own `encode` (the
        padded batch of the offline model, tested within 1e-5)."""
        states = self.encode_inputs(**self.batch_inputs(windows, samples))
        return states.content, states.emotion

    def batch_inputs(self, windows: list[Window], samples: list[torch.Tensor], kept: list[int] | None = None,
                     pad_to: tuple | None = None) -> dict:
        """The tensors `encode_inputs` takes for these windows (`kept`: unused, windowed encoding
        keeps nothing). The hidden states come out for
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
        valid = torch.full((rows,), n_frames)
        valid[: len(frames)] = torch.tensor(frames)
        i0, i1, frac = grid_indices(t, c_lo, c_hi)
        return dict(wave=wave, lengths=lengths, i0=i0, i1=i1, frac=frac,
                    frames=None if pad_to is None and len(set(frames)) == 1 else valid, hop_rows=hop_rows)

    def encode_inputs(self, wave, lengths, i0, i1, frac, frames, hop_rows, slots=None, hop=None,
                      branches=BRANCHES) -> HopStates:
        """`batch_inputs`' tensors -> HopStates: hidden [B, hop, hidden] of each branch asked for
        (`slots`, `hop`: unused, the windows say it). Reads no value back to the host (a CUDA
        graph can capture it)."""
        model = self.model
        device = model.content_map.weight.device
        wave, lengths, i0, i1, frac, hop_rows = (x.to(device) for x in (wave, lengths, i0, i1, frac, hop_rows))
        frames = None if frames is None else frames.to(device)
        wave = model.prepare_wave(wave, lengths)  # normalised over each window, as offline over the clip
        frac = frac.to(wave.dtype)
        rows = torch.arange(wave.shape[0], device=device)[:, None]
        encoders = {"content": model.content_encoder, "emotion": model.emotion_encoder}
        # a front end both encoders share runs once, before them; others run in their branch
        shared = model.front_ends(wave)[0] if model.shares_front_end and len(branches) == 2 else None

        def branch(name: str) -> torch.Tensor:
            enc = encoders[name]
            f = enc.front_end(wave) if shared is None else shared
            return enc.transformer(on_grid(f, i0, i1, frac), frames)[rows, hop_rows]

        if len(branches) == 2:
            hidden = dict(zip(branches, run_pair(lambda: branch(branches[0]), lambda: branch(branches[1]), device)))
        else:
            hidden = {name: branch(name) for name in branches}
        return HopStates(hidden.get("content"), hidden.get("emotion"))

    def commit(self, slot: int, written: int, rows: dict | None, b: int) -> None:
        """Nothing to keep: every hop encodes its whole window."""

    @staticmethod
    def kept_for(states: torch.Tensor, first: int, w: Window) -> torch.Tensor:
        """Hop window w's frames of emotion states kept for frames first, first + 1, ... (frames
        on dim -2: [n, hidden] or [B, n, hidden])."""
        return states[..., w.h0 - first : w.h1 - first, :]


def encode_windowed(model: EmoTalk, wave: torch.Tensor, settings: StreamSettings, progress=None):
    """A whole clip [N] through a stream's windows -> content, emotion hidden [1, T, hidden].

    Memory is that of one window, whatever the clip's length; the windows are exactly the
    ones a stream with the same settings would use (the emotion branch on its own windows and
    cadence where the settings give it one; a stream's whole-utterance rule at the end aside).
    """
    grid = StreamGrid.for_model(settings, model.cfg)
    encoder = WindowedEncoder(model, grid)
    n = wave.shape[0]
    total = num_frames(n)
    content, emotion = [], []
    hops = grid.hops(total)
    kept, first = None, 0  # the separate emotion branch's states for frames first, first + 1, ...
    for k in range(hops):
        w = grid.window(k, total, n)
        if not grid.separate_emotion:
            c, e = encoder.encode(wave[w.s0 : w.s1], w)
        else:
            c = encoder.encode_inputs(**encoder.batch_inputs([w], [wave[w.s0 : w.s1]]), branches=("content",)).content
            if kept is None or not grid.holds_emotion(first, kept.shape[1], w):
                ew = grid.emotion_window(k, total, n)
                kept = encoder.encode_inputs(**encoder.batch_inputs([ew], [wave[ew.s0 : ew.s1]]),
                                             branches=("emotion",)).emotion
                first = ew.h0
            e = encoder.kept_for(kept, first, w)
        content.append(c)
        emotion.append(e)
        if progress is not None:
            progress(k + 1, hops)
    return torch.cat(content, 1), torch.cat(emotion, 1)
