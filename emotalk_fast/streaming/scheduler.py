"""Which streams advance in a step, and how: a typed plan per group of hops that run as one
batched forward (vLLM v1's scheduler output, for hops instead of tokens).

Ready streams are grouped by hop length (the last, shorter hop of a flushed stream runs in a
group of its own). For each row the emotion policy, chosen once per engine, says where its
emotion states come from.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from ..model.config import SAMPLE_RATE, EmoTalkConfig
from ..model.emotalk import num_emotion_frames
from .grid import StreamGrid, Window
from .streams import StreamState


class EmotionSource(Enum):
    """Where a hop's emotion states come from."""

    JOINT = "joint"  # the hop's own window, both branches in one run
    WINDOW = "window"  # an emotion window of the branch's own, run now
    KEPT = "kept"  # states an earlier emotion run kept for these frames
    WHOLE = "whole"  # the emotion encoder over the whole utterance, as offline


class EmotionPolicy:
    """Where each hop's emotion states come from, for one engine's settings.

    A short utterance's first hop that only its end lets run reads the whole utterance's states
    (offline's, exactly); a hop whose frames an earlier run already covers (recent enough, or the
    whole utterance's) reads those; any other runs `fresh`: the hop's own window when both
    branches share windows, else an emotion window of its own."""

    def __init__(self, grid: StreamGrid, cfg: EmoTalkConfig, whole_utterance_ms: int):
        self.grid, self.cfg = grid, cfg
        self.whole_samples = whole_utterance_ms * SAMPLE_RATE // 1000  # kept whole until the end
        self.fresh = EmotionSource.WINDOW if grid.separate_emotion else EmotionSource.JOINT

    def source(self, s: StreamState, w: Window) -> EmotionSource:
        if self.whole_utterance_hop(s):
            return EmotionSource.WHOLE
        if s.emotion_kept is not None and self.grid.holds_emotion(s.kept_from, len(s.emotion_kept), w,
                                                                  any_age=s.label_logits is not None):
            return EmotionSource.KEPT
        return self.fresh

    def whole_utterance_hop(self, s: StreamState) -> bool:
        """This hop runs the emotion branch over the whole utterance: it is the first hop only
        the utterance's end lets run (whenever flush() came: the frames do not depend on the
        timing), the buffer still holds the whole utterance, and it is long enough for the
        offline emotion path (45 ms, as `animate` requires)."""
        return (s.ending and s.label_logits is None and s.buffer_start == 0 and 0 < s.received <= self.whole_samples
                and self.grid.window(s.next_hop).s1 > s.received
                and num_emotion_frames(self.cfg.emotion.num_cnn_frames(s.received)) >= 1)

    def keeps_whole(self, s: StreamState) -> bool:
        """The utterance may yet end within `whole_utterance_ms`: keep every sample of it."""
        return s.received <= self.whole_samples


@dataclass(frozen=True)
class RowPlan:
    """One stream's hop in a group."""

    sid: int
    window: Window
    emotion: EmotionSource


@dataclass(frozen=True)
class GroupPlan:
    """Hops of one length that run as one batched forward."""

    rows: tuple[RowPlan, ...]
    # padded to the engine's static shapes (a CUDA graph on CUDA): a full hop (incremental: its
    # lookahead too) whose emotion states all come one way, the hop's own windows (joint) or
    # given (a separate emotion branch)
    static: bool

    @property
    def hop(self) -> int:
        w = self.rows[0].window
        return w.h1 - w.h0

    @property
    def new_rows(self) -> int:
        """Frames the hop encodes that no earlier hop did: the hop and its lookahead (cut at a
        clip's end)."""
        w = self.rows[0].window
        return w.t1 - w.h0

    @property
    def joint(self) -> bool:
        """Every row's emotion comes from its own window, run with the content's."""
        return all(r.emotion is EmotionSource.JOINT for r in self.rows)

    @property
    def sids(self) -> list[int]:
        return [r.sid for r in self.rows]


class Scheduler:
    """Plans a step: each ready stream's next hop, grouped, with its emotion source."""

    def __init__(self, grid: StreamGrid, policy: EmotionPolicy, cuda_graphs: bool):
        self.grid, self.policy, self.cuda_graphs = grid, policy, cuda_graphs

    def plan(self, streams: dict[int, StreamState]) -> list[GroupPlan]:
        groups: dict[tuple, list[RowPlan]] = {}
        for sid, s in streams.items():
            w = self.ready(s)
            if w is not None:  # by hop and by new rows (hop + lookahead, cut at a clip's end)
                groups.setdefault((w.h1 - w.h0, w.t1 - w.h0), []).append(RowPlan(sid, w, self.policy.source(s, w)))
        return [self._group(tuple(rows)) for rows in groups.values()]

    def _group(self, rows: tuple[RowPlan, ...]) -> GroupPlan:
        plan = GroupPlan(rows, static=False)
        full = plan.hop == self.grid.hop and (not self.grid.settings.incremental
                                              or plan.new_rows == self.grid.hop + self.grid.lookahead)
        if self.cuda_graphs and full and plan.joint != self.grid.separate_emotion:
            plan = replace(plan, static=True)
        return plan

    def ready(self, s: StreamState) -> Window | None:
        """The stream's next window if it can run now, else None."""
        if s.ending:
            if self.grid.start(s.next_hop) >= s.total_frames:
                return None
            return self.grid.window(s.next_hop, *s.totals)
        w = self.grid.window(s.next_hop)
        return w if w.s1 <= s.received else None
