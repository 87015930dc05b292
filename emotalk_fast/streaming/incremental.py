"""Incremental encoding: each hop encodes only its new rows (the hop and the lookahead) through
both wav2vec2 encoders, attending over the keys and values kept from earlier hops, so a frame is
encoded once (its lookahead rows again when their own hop comes).

Per stream and encoder, rings allocated once keep, for the last `context` frames: every layer's
keys and values, and the projected features the positional convolution reads on its left. A hop:

1. normalises its window's samples over the window (as the windowed path does: so the CNN
   features of the new rows are the windowed path's, exactly) and runs the CNN front end on the
   new rows' samples only (their receptive fields);
2. reads them off the fixed 30 fps grid and projects them;
3. the positional convolution reads the kept projected rows on the left and zeros past the new
   rows on the right (the windowed path's window edges);
4. each layer: the new rows' queries attend over the kept keys and values and the new rows'
   own; attention has no position of its own in wav2vec2, so the ring's order does not matter.

What differs from the windowed path: kept rows were encoded when they were new, with the
lookahead they had then, and are not re-encoded with the audio that came after. A stream with no
context (context_ms=0) keeps nothing and equals the windowed stream (tested).

The executor computes the new rows' keys and values and returns them; the engine writes them
into the rings only when the hop's group succeeded (`EncoderRings.commit`). The streaming ONNX
export and the ONNX Runtime backend run the same functions: `new_row_features`, `encode_rows`,
`write_rows`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.emotalk import EmoTalk
from ..model.encoder import Wav2Vec2Encoder
from ..runtime.threads import run_pair
from .encoders import BRANCHES, HopStates, on_grid
from .grid import StreamGrid, Window, grid_indices


def write_rows(ring: torch.Tensor, new: torch.Tensor, written, rows: int, dim: int, inplace: bool = False):
    """`ring` with a hop's rows `new` (along `dim`) written at frames written, written + 1, ...
    mod `rows` (only the last `rows` of them when the hop is longer than the ring); in place, or
    a new tensor (an exported graph's next state)."""
    n = new.shape[dim]
    j = torch.arange(max(n - rows, 0), n, device=new.device)
    write = ring.index_copy_ if inplace else ring.index_copy
    return write(dim, (written + j) % rows, new.index_select(dim, j))


class EncoderRings:
    """One encoder's kept rows for every slot: keys and values per layer [slots, layers, rows,
    hidden] and projected features [slots, rows, hidden], written round-robin (frame f of a
    stream at row f mod rows); allocated once."""

    def __init__(self, encoder: Wav2Vec2Encoder, slots: int, rows: int, device, dtype):
        cfg = encoder.cfg
        self.rows = rows
        size = (slots, cfg.num_layers, max(rows, 1), cfg.hidden_size)
        self.k = torch.zeros(size, device=device, dtype=dtype)
        self.v = torch.zeros(size, device=device, dtype=dtype)
        self.proj = torch.zeros(slots, max(rows, 1), cfg.hidden_size, device=device, dtype=dtype)

    def commit(self, slot: int, written: int, rows: EncodedRows, b: int) -> None:
        """Keep row b's hop rows of `rows` for a stream that had `written` frames kept before."""
        if self.rows == 0:
            return
        write_rows(self.k[slot], rows.k[b], written, self.rows, 1, inplace=True)
        write_rows(self.v[slot], rows.v[b], written, self.rows, 1, inplace=True)
        write_rows(self.proj[slot], rows.proj[b], written, self.rows, 0, inplace=True)


@dataclass(frozen=True)
class EncodedRows:
    """One encoder's hop for a batch: hidden states of the new rows [B, n, hidden], and what the
    hop rows leave to keep: keys and values [B, layers, hop, hidden], projected features [B, hop,
    hidden]."""

    hidden: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    proj: torch.Tensor

    def head(self, rows: int) -> EncodedRows:
        """The first `rows` of the batch, copied (a CUDA graph's outputs change at its next replay)."""
        return EncodedRows(*(x[:rows].clone() for x in (self.hidden, self.k, self.v, self.proj)))


class IncrementalEncoder:
    """Both encoders of a model, incrementally, over the rings of `slots` streams (a HopEncoder
    that keeps each hop's rows)."""

    keeps_rows = True

    def __init__(self, model: EmoTalk, grid: StreamGrid, slots: int, device, dtype):
        self.model, self.grid = model, grid
        self.rings = {
            "content": EncoderRings(model.content_encoder, slots, grid.context, device, dtype),
            "emotion": EncoderRings(model.emotion_encoder, slots, grid.emotion_context, device, dtype),
        }

    @property
    def longest(self) -> tuple[int, int]:
        """(window samples, new rows' samples) of a full hop: every hop of the grid fits in them."""
        w = self.grid.window(self.grid.steady())
        return w.s1 - w.s0, self.grid.new_rows(w).samples

    def batch_inputs(self, windows: list[Window], samples: list[torch.Tensor], kept: list[int] | None = None,
                     pad_to: tuple | None = None) -> dict:
        """The tensors `encode_inputs` takes for these hops (one length of new rows [h0, t1)):
        each window's raw samples (16 kHz) and length, where its new rows' CNN input lies in it,
        the grid indices of the new rows, the frames each stream kept so far. pad_to (rows, window
        samples, new rows' samples): exactly that shape, whatever the windows (static shapes);
        padding rows are silence that kept nothing."""
        n = windows[0].t1 - windows[0].h0
        new = [self.grid.new_rows(w) for w in windows]
        rows, n_samples, n_segment = pad_to or (len(windows), max(len(x) for x in samples),
                                                max(r.samples for r in new))
        wave = torch.zeros(rows, n_samples)
        lengths = torch.full((rows,), n_samples)  # padding rows: all samples (silence) valid
        offset = torch.zeros(rows, 1, dtype=torch.long)
        t, lo, hi = (torch.zeros(rows, k, dtype=torch.long) for k in (n, 1, 1))
        for b, (w, x, r) in enumerate(zip(windows, samples, new)):
            wave[b, : len(x)] = x
            lengths[b] = len(x)
            offset[b] = r.offset
            t[b] = w.h0 + torch.arange(n)
            lo[b], hi[b] = r.first, w.c_hi
        # past a hop's reach the CNN frames are computed but never read: any sample will do there
        index = (offset + torch.arange(n_segment)).clamp(max=n_samples - 1)
        i0, i1, frac = grid_indices(t, lo, hi)
        kept = torch.tensor(list(kept or [0] * len(windows)) + [0] * (rows - len(windows)))
        return dict(wave=wave, lengths=lengths, index=index, i0=i0, i1=i1, frac=frac, kept=kept)

    def encode_inputs(self, wave, lengths, index, i0, i1, frac, kept, slots, hop: int,
                      branches=BRANCHES) -> HopStates:
        """`batch_inputs`' tensors and the streams' slots [B] -> the hop through the branches asked
        for (its first `hop` rows kept later) -> HopStates. Changes no ring and reads no value
        back to the host (a CUDA graph can capture it)."""
        device = self.model.content_map.weight.device
        wave, lengths, index, i0, i1, frac, slots, kept = (torch.as_tensor(x).to(device) for x in (
            wave, lengths, index, i0, i1, frac, slots, kept))
        pair = lambda a, b: run_pair(a, b, device)  # noqa: E731 - both branches at once where cores allow
        return hop_states(encode_hop(self.model, self.rings, wave, lengths, index, i0, i1, frac, slots, kept, hop,
                                     branches, pair), hop)

    def commit(self, slot: int, written: int, rows: dict | None, b: int) -> None:
        for name, r in rows.items():
            self.rings[name].commit(slot, written, r, b)


def encode_hop(model: EmoTalk, rings: dict, wave, lengths, index, i0, i1, frac, slots, kept, hop: int,
               branches=BRANCHES, pair=None) -> dict[str, EncodedRows]:
    """A batch of hops' new rows through the branches asked for -> {branch: EncodedRows}: the
    windows' raw samples [B, W] (lengths [B]) normalised over each window, as the windowed path
    does (so the new rows' CNN features are its own), the samples the new rows' CNN frames read
    (index [B, S] into the window), the CNN, the grid (i0, i1, frac), then each encoder over the
    kept rows of `rings` ({branch: EncoderRings or alike}) at `slots` [B], `kept` [B] frames kept
    so far. `pair(f, g)`: how two branches run (default one after the other). The PyTorch
    encoder runs it, and ONNX Runtime's graph is it, exported."""
    segment = torch.gather(model.prepare_wave(wave, lengths), 1, index)
    feats = new_row_features(model, segment, i0, i1, frac, branches)
    encoders = {"content": model.content_encoder, "emotion": model.emotion_encoder}

    def branch(name: str) -> EncodedRows:
        return encode_rows(encoders[name], rings[name], feats[name], slots, kept, hop)

    if pair is not None and len(branches) == 2:
        return dict(zip(branches, pair(lambda: branch(branches[0]), lambda: branch(branches[1]))))
    return {name: branch(name) for name in branches}


def hop_states(rows: dict[str, EncodedRows], hop: int) -> HopStates:
    """An incremental hop's {branch: EncodedRows} -> HopStates (the hop's rows of each branch)."""
    hidden = {name: r.hidden[:, :hop] for name, r in rows.items()}
    return HopStates(hidden.get("content"), hidden.get("emotion"), rows)


def new_row_features(model: EmoTalk, segment: torch.Tensor, i0, i1, frac, branches=BRANCHES) -> dict:
    """The samples the new rows' CNN frames read [B, S] (normalised over their window) -> each
    branch's CNN features on the grid [B, n, C] (i0, i1, frac: the new rows' grid indices)."""
    feats = dict(zip(BRANCHES, model.front_ends(segment, "content" in branches, "emotion" in branches)))
    return {name: on_grid(feats[name], i0, i1, frac.to(segment.dtype)) for name in branches}


def encode_rows(enc: Wav2Vec2Encoder, rings: EncoderRings, feats: torch.Tensor, slot: torch.Tensor,
                kept: torch.Tensor, hop: int) -> EncodedRows:
    """One encoder over new rows: CNN features on the grid [B, n, C] -> EncodedRows, reading the
    kept rows of each stream's slot [B] (`kept` [B]: frames kept so far per stream)."""
    B, n = feats.shape[:2]
    device = feats.device
    filled = kept.clamp(max=rings.rows)  # valid ring rows
    h = enc.proj(enc.proj_norm(feats))
    proj = h[:, :hop]
    # the positional convolution: the kept rows in time order on the left, zeros past the new rows
    left = min(enc.cfg.num_pos_conv_taps // 2, rings.rows)
    if left:
        ages = torch.arange(left, 0, -1, device=device)  # left, ..., 1 frames before the first new row
        order = (kept[:, None] - ages) % rings.rows
        before = rings.proj[slot[:, None], order] * (ages <= filled[:, None])[..., None].to(h.dtype)
        x = torch.cat([before, h], 1)
    else:
        x = h
    # only the new rows' outputs: the window each reads, the zeros past it padded here
    taps, pad = enc.cfg.num_pos_conv_taps, enc.pos_conv.padding[0]
    h = h + F.gelu(few_rows_grouped_conv(F.pad(x.transpose(1, 2), (pad - left, taps - 1 - pad)), enc.pos_conv))
    # attention over the kept rows (valid: the first `filled` of the ring) and the new rows
    valid = torch.arange(rings.k.shape[2], device=device)[None, :] < filled[:, None]
    valid = torch.cat([valid, valid.new_ones(B, n)], 1)[:, None, None, :]
    # additive, not boolean: the same softmax, and an ONNX export needs no NaN guard (IsNaN) for it
    mask = torch.zeros(valid.shape, device=device, dtype=feats.dtype).masked_fill(~valid, float("-inf"))
    ks, vs = [], []
    # [B, layers, rows, hidden]: one gather, not one per layer (index_select: 3x faster than rings.k[slot])
    kept_k, kept_v = rings.k.index_select(0, slot), rings.v.index_select(0, slot)
    for i, layer in enumerate(enc.layers):
        q, k, v = layer.qkv(layer.norm1(h)).view(B, n, 3, layer.num_heads, -1).permute(2, 0, 3, 1, 4)
        ks.append(k.transpose(1, 2).reshape(B, n, -1)[:, :hop])
        vs.append(v.transpose(1, 2).reshape(B, n, -1)[:, :hop])
        heads = lambda x: x.view(B, -1, layer.num_heads, q.shape[-1]).transpose(1, 2)  # noqa: E731
        k_all = torch.cat([heads(kept_k[:, i]), k], 2)
        v_all = torch.cat([heads(kept_v[:, i]), v], 2)
        a = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        h = h + layer.out(a.transpose(1, 2).reshape(B, n, -1))
        h = h + layer.ff2(F.gelu(layer.ff1(layer.norm2(h))))
    return EncodedRows(enc.final_norm(h), torch.stack(ks, 1), torch.stack(vs, 1), proj)


def few_rows_grouped_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """A grouped Conv1d without padding over x [B, C, n + taps - 1] -> [B, n, C], as one batched
    product per group over its windows: for a few outputs oneDNN's convolution costs several
    times more (it reorders the whole kernel on every call: docs/performance.md)."""
    B, C, length = x.shape
    out_channels, per_group, taps = conv.weight.shape
    groups, n = conv.groups, length - taps + 1
    # [groups, B * n, per_group * taps]: the batch's rows in one product with each group's kernel,
    # which a batch dimension of its own would copy once per row of the batch
    windows = x.unfold(2, taps, 1).reshape(B, groups, per_group, n, taps).permute(1, 0, 3, 2, 4)
    weight = conv.weight.reshape(groups, out_channels // groups, per_group * taps).transpose(1, 2)
    y = torch.bmm(windows.reshape(groups, B * n, per_group * taps), weight)  # [groups, B * n, out per group]
    y = y.reshape(groups, B, n, -1).permute(1, 2, 0, 3).reshape(B, n, out_channels)
    return y if conv.bias is None else y + conv.bias
