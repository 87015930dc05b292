"""What the engine keeps per stream, and how a pushed chunk is checked before it is kept."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InvalidInput, InvalidType
from ..io.audio import StreamingResampler
from .grid import Window


@dataclass
class StreamState:
    """One live stream: everything the engine knows about it. Only the engine's commit and its
    input calls change it; planning and running a hop read it."""

    slot: int  # its row of the KV cache
    sample_rate: int
    resampler: StreamingResampler | None
    level: object
    person: object
    style_from: tuple = ()  # (level weights, person weights) fading from ...
    style_to: tuple = ()  # ... to these
    fade_start: int = 0  # frame where the fade starts
    fade_frames: int = 0
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # 16 kHz samples
    buffer_start: int = 0  # absolute index of buffer[0]
    received: int = 0  # 16 kHz samples received in all
    next_hop: int = 0
    ending: bool = False  # flush() was called: the clip's length is known
    total_frames: int = 0  # once ending: the frames the whole utterance gets
    emotion_sum: torch.Tensor | None = None  # sum of emitted frames' emotion states [1, hidden]
    emotion_frames: int = 0
    emotion_kept: torch.Tensor | None = None  # emotion states [n, hidden] already computed for frames ...
    kept_from: int = 0  # ... kept_from, kept_from + 1, ...
    label_logits: torch.Tensor | None = None  # [labels]: the whole utterance's, as offline computes it
    encoded_rows: int = 0  # frames whose encoder states the rings keep (incremental encoding)

    def samples(self, w: Window) -> np.ndarray:
        """The window's samples [s1 - s0] from the buffer."""
        return self.buffer[w.s0 - self.buffer_start : w.s1 - self.buffer_start]

    def style_at(self, frame: int):
        if self.fade_frames == 0 or frame >= self.fade_start + self.fade_frames:
            return self.style_to
        a = max(0.0, (frame - self.fade_start) / self.fade_frames)
        return tuple((1 - a) * f + a * t for f, t in zip(self.style_from, self.style_to))

    @property
    def totals(self) -> tuple:
        """(frames, samples) of the whole utterance once it has ended (windows clip to them)."""
        return (self.total_frames, self.received) if self.ending else ()

    def append(self, chunk: np.ndarray) -> None:
        if chunk.size:
            self.buffer = np.concatenate([self.buffer, chunk])
            self.received += chunk.size


def validate_chunk(samples) -> np.ndarray:
    """A pushed chunk -> float32 [n], or TypeError/ValueError saying what was wrong."""
    if isinstance(samples, torch.Tensor):
        if not samples.is_floating_point():
            raise InvalidType(f"stream samples must be floating point, got {samples.dtype}")
        samples = samples.detach().cpu().float().numpy()
    if not isinstance(samples, np.ndarray):
        if isinstance(samples, (list, tuple)):
            samples = np.asarray(samples, dtype=np.float32)
        else:
            raise InvalidType(f"stream samples must be a numpy array or torch tensor, got {type(samples).__name__}")
    if samples.dtype.kind != "f":
        raise InvalidType(f"stream samples must be floating point in [-1, 1], got dtype {samples.dtype}")
    if samples.ndim != 1:
        raise InvalidInput(f"stream samples must be mono [n], got shape {list(samples.shape)}")
    if not np.isfinite(samples).all():
        raise InvalidInput(f"chunk has {int((~np.isfinite(samples)).sum())} NaN or infinite samples; "
                           "it was not added (the stream is unchanged)")
    return samples.astype(np.float32, copy=False)
