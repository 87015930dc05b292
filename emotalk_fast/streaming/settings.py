"""Every setting of a stream, with its default, in one frozen object checked once.

The CLI, `Animator.stream` / `engine`, the engine, the windows, the budget and `serve` all take a
`StreamSettings`; nothing else spells out a stream setting's default. `hop_ms="auto"` stands for
the smallest hop this machine holds in real time and is measured once, by `resolve_hop`
(streaming/budget.py); every other method wants a concrete hop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import InvalidInput

GRID_MS = 100  # the grids of 50 Hz CNN frames and 30 fps output frames coincide every 100 ms
AUTO = "auto"
# `serve` and `stream --realtime` given no hop: the smallest this machine keeps up at, measured
# at start-up (a live stream that falls behind grows its latency without bound)
LIVE_HOP_MS = AUTO
# A streaming ONNX export's decoder history (max_cache_s): its ring passes in and out of the
# graph every hop, and a stream's 600 s would be 147 MB each way at release size
EXPORT_MAX_CACHE_S = 20.0
ENCODINGS = ("windowed", "incremental")
MAX_STREAMS = 16  # an engine's slots (its KV cache and rings) unless asked otherwise; serve's too
# A 50 Hz CNN frame reads 400 samples (25 ms) from its start, 80 more than its 320-sample stride:
# the last frame of a window ends 5 ms past the window's grid end.
CNN_TAIL_MS = 5


def check_grid_ms(value, name: str, allow_zero: bool = True) -> int:
    """A duration on the 100 ms grid -> itself, or InvalidInput naming `name` (a keyword, or a
    command-line flag when the CLI checks it)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value % GRID_MS or value < 0 or \
            (value == 0 and not allow_zero):
        raise InvalidInput(f"{name} must be a {'non-negative' if allow_zero else 'positive'} multiple of {GRID_MS} ms "
                           f"(it keeps the 50 Hz and 30 fps grids aligned), got {value!r}")
    return int(value)


@dataclass(frozen=True)
class StreamSettings:
    """How a stream cuts audio into windows, and how much of it it keeps.

    >>> settings = StreamSettings(hop_ms=400, context_ms=1000)
    >>> stream = animator.stream(settings=settings)      # or animator.stream(hop_ms=400, context_ms=1000)
    """

    hop_ms: int | str = 100  # audio per hop, a multiple of 100 ms; "auto": the smallest this machine holds
    lookahead_ms: int = 200  # audio after a hop that its window reads (frames wait for it)
    context_ms: int = 2000  # audio before a hop that its window reads
    emotion_context_ms: int | None = None  # the emotion branch's context; None: context_ms
    # how often the emotion branch runs, a multiple of the hop up to hop + lookahead; None: the
    # largest (every third 100 ms hop at the defaults). hop_ms: every hop, on the content's windows.
    emotion_hop_ms: int | None = None
    # an utterance up to this long gets offline's emotion states and label, exactly, once it ends
    # (its samples are kept whole until then: 64 KB per second); 0: never
    whole_utterance_ms: int = 4000
    ramp: bool = True  # hops of 100, 200, 400, ... ms first, doubling up to the hop: first frames sooner
    max_cache_s: float = 600.0  # the decoder's KV cache (a sliding window of history), seconds
    # windowed: each hop re-encodes its whole window (context + hop + lookahead); incremental: each
    # hop encodes only its new rows (hop + lookahead), attending over the kept keys and values of
    # the last `context` (streaming/incremental.py), both branches every hop
    encoding: str = "incremental"

    def __post_init__(self):
        if self.hop_ms != AUTO:
            check_grid_ms(self.hop_ms, "hop_ms", allow_zero=False)
        check_grid_ms(self.lookahead_ms, "lookahead_ms")
        check_grid_ms(self.context_ms, "context_ms")
        if self.emotion_context_ms is not None:
            check_grid_ms(self.emotion_context_ms, "emotion_context_ms")
        if self.emotion_hop_ms is not None:
            check_grid_ms(self.emotion_hop_ms, "emotion_hop_ms", allow_zero=False)
            if self.hop_ms != AUTO and (self.emotion_hop_ms % self.hop_ms
                                        or self.emotion_hop_ms > self.hop_ms + self.lookahead_ms):
                raise InvalidInput(f"emotion_hop_ms must be a multiple of hop_ms ({self.hop_ms}) and at most "
                                   f"hop_ms + lookahead_ms ({self.hop_ms + self.lookahead_ms}: later hops read the "
                                   f"states its window already holds), got {self.emotion_hop_ms!r}")
        if isinstance(self.whole_utterance_ms, bool) or not isinstance(self.whole_utterance_ms, (int, np.integer)) \
                or self.whole_utterance_ms < 0:
            raise InvalidInput(f"whole_utterance_ms must be a non-negative integer, got {self.whole_utterance_ms!r}")
        if not isinstance(self.ramp, (bool, np.bool_)):
            raise InvalidInput(f"ramp must be True or False, got {self.ramp!r}")
        if isinstance(self.max_cache_s, bool) or not isinstance(self.max_cache_s, (int, float)) \
                or not self.max_cache_s > 0:
            raise InvalidInput(f"max_cache_s must be > 0, got {self.max_cache_s!r}")
        if self.encoding not in ENCODINGS:
            raise InvalidInput(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if self.incremental and self.emotion_hop_ms is not None and self.emotion_hop_ms != self.hop_ms:
            raise InvalidInput("encoding incremental runs the emotion branch every hop, on its own kept context "
                               f"(emotion_context_ms): leave emotion_hop_ms unset, got {self.emotion_hop_ms!r}")

    @property
    def is_auto(self) -> bool:
        return self.hop_ms == AUTO

    @property
    def incremental(self) -> bool:
        return self.encoding == "incremental"

    def with_hop(self, hop_ms: int) -> StreamSettings:
        """The same settings at a concrete hop (checked again)."""
        return replace(self, hop_ms=hop_ms)

    def _concrete(self) -> int:
        if self.is_auto:
            raise InvalidInput("hop_ms is 'auto': resolve it first (streaming.budget.resolve_hop)")
        return self.hop_ms

    @property
    def emotion_context(self) -> int:
        """The emotion branch's context in ms (its default: the content's)."""
        return self.context_ms if self.emotion_context_ms is None else self.emotion_context_ms

    @property
    def emotion_hop(self) -> int:
        """The emotion branch's cadence in ms: as given, else as seldom as the lookahead allows,
        the largest multiple of the hop up to hop + lookahead."""
        hop = self._concrete()
        if self.emotion_hop_ms is not None:
            return self.emotion_hop_ms
        return hop if self.incremental else hop * (1 + self.lookahead_ms // hop)

    @property
    def separate_emotion(self) -> bool:
        """The emotion branch runs on windows or at a cadence of its own (else both branches
        share each hop's window). Incremental encoding runs both every hop: never separate."""
        return not self.incremental and (self.emotion_context, self.emotion_hop) != (self.context_ms, self._concrete())

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency at 16 kHz: audio time from a frame's instant until the sample that
        makes it final arrives (the worst frame of a steady hop; compute not included): the hop,
        the lookahead, and the 5 ms the last CNN frame reads past its grid position (a test
        reads the same off the windows of streaming/grid.py)."""
        return float(self._concrete() + self.lookahead_ms + CNN_TAIL_MS)

    def as_dict(self) -> dict:
        return asdict(self)
