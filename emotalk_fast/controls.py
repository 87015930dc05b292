"""The decoder's style controls: emotion level and person (speaking style), validated at the
API boundary and turned into the weight rows the decoder's linear embeddings take."""
from __future__ import annotations

import numpy as np
import torch

from .config import EmoTalkConfig


def check_style(cfg: EmoTalkConfig, level, person) -> tuple[int, int]:
    """Validate an emotion level and a person index; return them as ints."""
    dec = cfg.decoder
    for name, value, count in (("level", level, dec.num_levels), ("person", person, dec.num_persons)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < count:
            raise ValueError(f"{name} must be an integer in 0..{count - 1}, got {value!r}")
    return int(level), int(person)


def style_weights(cfg: EmoTalkConfig, levels, persons, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Level and person indices (one per batch item) -> one-hot rows [B, 2], [B, 24]."""
    dec = cfg.decoder
    level = torch.nn.functional.one_hot(torch.as_tensor(levels, device=device).reshape(-1), dec.num_levels)
    person = torch.nn.functional.one_hot(torch.as_tensor(persons, device=device).reshape(-1), dec.num_persons)
    return level.to(dtype), person.to(dtype)
