"""The decoder's style controls: emotion level and person (speaking style).

The release feeds one-hot rows through two linear embeddings. The same maps take any weights,
so a float level (0.3 -> weights [0.7, 0.3]), a mix of persons ({3: 0.7, 12: 0.3} or a
24-vector) and per-frame schedules with cross-fades are all exact uses of the released model.
Integer inputs build the very same one-hot rows, so they stay bit-identical to the release.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import FPS, EmoTalkConfig
from ..errors import InvalidInput, InvalidType

MIX_TOLERANCE = 1e-4  # how far a mix's weights may sum from 1


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def level_weights(cfg: EmoTalkConfig, level) -> np.ndarray:
    """An index 0..num_levels-1, a float in [0, 1] (two levels), or a weight vector -> [num_levels]."""
    n = cfg.decoder.num_levels
    _reject_scalar_types("level", level, f"an index 0..{n - 1}, a float in [0, 1] or {n} weights")
    if _is_int(level):
        return _one_hot("level", level, n)
    if isinstance(level, (float, np.floating)):
        if n != 2 or not 0.0 <= level <= 1.0 or math.isnan(level):
            raise InvalidInput(f"a float level must be in [0, 1], got {level}")
        return np.array([1.0 - level, level])
    return _weight_vector("level", level, n)


def person_weights(cfg: EmoTalkConfig, person) -> np.ndarray:
    """An index 0..23, a mix {index: weight} or a 24-vector of weights -> [num_persons]."""
    n = cfg.decoder.num_persons
    _reject_scalar_types("person", person, f"an index 0..{n - 1}, a mix {{index: weight}} or {n} weights")
    if _is_int(person):
        return _one_hot("person", person, n)
    if isinstance(person, dict):
        w = np.zeros(n)
        for k, v in person.items():
            if not _is_int(k) or not 0 <= k < n:
                raise InvalidInput(f"person mix keys must be integers in 0..{n - 1}, got {k!r}")
            w[int(k)] = _number("person mix weight", v)
        return _weight_vector("person", w, n)
    return _weight_vector("person", person, n)


def _reject_scalar_types(name: str, value, accepted: str) -> None:
    """True/False and strings would otherwise pass as numbers or arrays with a puzzling message."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise InvalidType(f"{name} must be {accepted}; got {type(value).__name__} {value!r}")


def _one_hot(name: str, index, n: int) -> np.ndarray:
    """The release's input: exactly 0s and one 1, so integer controls stay bit-identical."""
    if not 0 <= index < n:
        raise InvalidInput(f"{name} must be in 0..{n - 1}, got {index}")
    return np.eye(n, dtype=np.float64)[int(index)]


def _number(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidInput(f"{name} must be a number, got {v!r}")
    return float(v)


def _weight_vector(name: str, value, n: int) -> np.ndarray:
    try:
        w = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be an index, a float or {n} weights, got {value!r}") from None
    if w.shape != (n,):
        raise InvalidInput(f"{name} weights must have {n} entries, got shape {list(w.shape)}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InvalidInput(f"{name} weights must be finite and non-negative, got {w.tolist()}")
    if abs(w.sum() - 1.0) > MIX_TOLERANCE:
        raise InvalidInput(f"{name} weights must sum to 1, got {w.sum():.6g}")
    return w


def check_style(cfg: EmoTalkConfig, level, person) -> tuple[np.ndarray, np.ndarray]:
    """Validate a level and a person in any accepted form -> their weight vectors."""
    return level_weights(cfg, level), person_weights(cfg, person)


def style_weights(cfg: EmoTalkConfig, levels, persons, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Level and person indices, one per batch item -> one-hot rows [B, 2], [B, 24]."""
    dec = cfg.decoder
    level = torch.nn.functional.one_hot(torch.as_tensor(levels, device=device).reshape(-1), dec.num_levels)
    person = torch.nn.functional.one_hot(torch.as_tensor(persons, device=device).reshape(-1), dec.num_persons)
    return level.to(dtype), person.to(dtype)


@dataclass(frozen=True)
class Schedule:
    """Style changes within a clip: [(start seconds, level, person), ...], first at 0.

    Each entry holds from its start until the next one; with `crossfade_s`, the weights move
    linearly from the previous style to the new one over that time, starting at the change.
    """

    changes: tuple[tuple[float, object, object], ...]
    crossfade_s: float = 0.0

    def __post_init__(self):
        changes = tuple((float(t), lv, p) for t, lv, p in self.changes)
        if not changes or changes[0][0] != 0.0:
            raise InvalidInput("a schedule starts with an entry at time 0")
        if any(b[0] <= a[0] for a, b in zip(changes, changes[1:])):
            raise InvalidInput("schedule times must increase strictly")
        if not self.crossfade_s >= 0:
            raise InvalidInput(f"crossfade_s must be >= 0, got {self.crossfade_s}")
        object.__setattr__(self, "changes", changes)

    def weights(self, cfg: EmoTalkConfig, num_frames: int, fps: int = FPS) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame level and person weights [T, 2], [T, 24]."""
        styles = [check_style(cfg, lv, p) for _, lv, p in self.changes]
        t = np.arange(num_frames) / fps
        lw = np.empty((num_frames, cfg.decoder.num_levels))
        pw = np.empty((num_frames, cfg.decoder.num_persons))
        lw[:], pw[:] = styles[0]
        for (start, _, _), (new_l, new_p) in zip(self.changes[1:], styles[1:]):
            first = int(np.searchsorted(t, start - 1e-9))
            if first >= num_frames:
                break
            # fade from what is in effect just before the change (it may be mid-fade itself)
            from_l, from_p = (lw[first - 1].copy(), pw[first - 1].copy()) if first else (new_l, new_p)
            if self.crossfade_s > 0:
                a = np.clip((t[first:] - start) / self.crossfade_s, 0.0, 1.0)[:, None]
            else:
                a = np.ones((num_frames - first, 1))
            lw[first:] = (1 - a) * from_l + a * new_l
            pw[first:] = (1 - a) * from_p + a * new_p
        return lw, pw
