"""How far streaming lands from offline: blendshape deviation, latency and compute per hop
for a grid of context x lookahead settings (`emotalk-fast stream-eval`)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..model.config import SAMPLE_RATE
from ..streaming.settings import StreamSettings
from ..streaming.stream import play


FLOOR_NOTE = ("whole clip (floor): the clip as one stream window, with all its context and lookahead; what remains "
              "is the stream's fixed 30 fps grid and the emotion branch's single resampling, so it is not 0: no "
              "stream setting lands closer to offline than this row")


def stream_deviation(animator, speech: np.ndarray, settings: StreamSettings, offline: np.ndarray | None = None,
                     level: int = 1, person: int = 0) -> dict:
    """One setting: max/mean |stream - offline| over all frames and channels, and timings."""
    if offline is None:
        offline = animator.animate(speech, level=level, person=person, long_audio_s=None).blendshapes
    stream = animator.stream(level, person, settings)
    hop_ms = stream.settings.hop_ms
    compute = []
    frames = play(stream, speech, hop_ms * SAMPLE_RATE // 1000,
                  on_hop=lambda i, f, c, w: compute.append(c) if len(f) else None)
    err = np.abs(frames - offline)
    return {"settings": stream.settings.as_dict(), "context_ms": settings.context_ms,
            "lookahead_ms": settings.lookahead_ms, "hop_ms": hop_ms,
            "max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "latency_ms": stream.latency_ms, "hop_compute_ms": 1000 * float(np.median(compute)),
            "frames": int(len(frames))}


def grid_floor(animator, speech: np.ndarray, offline: np.ndarray) -> dict:
    """The clip as one window (unlimited context and lookahead): what remains is the fixed
    30 fps grid and the emotion branch's single resampling, the floor no setting goes below."""
    import torch

    from ..model.style import style_weights
    from ..streaming.encoders import encode_windowed

    whole_ms = 100 * -(-len(speech) * 10 // SAMPLE_RATE)
    one_window = StreamSettings(hop_ms=whole_ms, lookahead_ms=0, context_ms=0, emotion_hop_ms=whole_ms, ramp=False)
    with torch.inference_mode():
        wave = torch.from_numpy(speech).to(animator.device, animator.dtype)
        content, emotion = encode_windowed(animator.model, wave, one_window)
        weights = style_weights(animator.config, 1, 0, animator.dtype, animator.device)
        frames = animator.model.decode(content, emotion, *weights)[0][0].float().cpu().numpy()
    err = np.abs(frames - offline)
    return {"context_ms": None, "lookahead_ms": None, "max_abs": float(err.max()), "mean_abs": float(err.mean())}


def evaluate(animator, speech: np.ndarray, contexts_ms, lookaheads_ms, settings: StreamSettings | None = None,
             progress=None, encodings=None) -> list[dict]:
    """The grid floor, then one row per (context, lookahead, encoding) at `settings` otherwise (a
    concrete hop); `encodings` (default the settings' own) side by side, one after the other per
    setting. progress(done, total, message) is called before each row."""
    settings = StreamSettings() if settings is None else settings
    encodings = (settings.encoding,) if encodings is None else tuple(encodings)
    offline = animator.animate(speech, long_audio_s=None).blendshapes
    rows = [grid_floor(animator, speech, offline)]
    grid = [(c, a, e) for c in contexts_ms for a in lookaheads_ms for e in encodings]
    # a first stream warms the kernels up, so the first row's compute is as warm as the others'
    warm = replace(settings, context_ms=grid[0][0], lookahead_ms=grid[0][1], encoding=grid[0][2],
                   emotion_hop_ms=None if grid[0][2] == "incremental" else settings.emotion_hop_ms)
    stream_deviation(animator, speech[: 2 * SAMPLE_RATE], warm)
    for i, (c, a, e) in enumerate(grid):
        if progress is not None:
            progress(i, len(grid), f"context {c} ms, lookahead {a} ms, {e}")
        one = replace(settings, context_ms=c, lookahead_ms=a, encoding=e,
                      emotion_hop_ms=None if e == "incremental" else settings.emotion_hop_ms)
        rows.append(stream_deviation(animator, speech, one, offline))
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| context | lookahead | encoding | latency | max abs dev | mean abs dev | compute per hop |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["context_ms"] is None:
            lines.append(f"| whole clip (floor) | whole clip | - | - | {r['max_abs']:.4f} | {r['mean_abs']:.4f} | - |")
            continue
        lines.append(f"| {r['context_ms'] / 1000:g} s | {r['lookahead_ms']} ms | {r['settings']['encoding']} | "
                     f"{r['latency_ms']:.0f} ms | {r['max_abs']:.4f} | {r['mean_abs']:.4f} | "
                     f"{r['hop_compute_ms']:.0f} ms |")
    return "\n".join(lines + ["", FLOOR_NOTE])
