"""What this machine holds in real time, measured: the compute of one batched hop at a stream's
settings, how many live streams keep up, and the smallest hop that keeps up with a given number
of streams (`hop_ms="auto"`, `--hop-ms auto`).

A hop of n streams must take at most HEADROOM of the hop's own duration, or the streams fall
further behind every hop. The cost of n streams is measured at 1 and at up to MEASURED_MAX
streams and taken as linear in between and beyond (a batched hop on a CPU is close to linear;
measuring 16 release-size streams would take a minute of start-up). Steady-state windows
(full context), noise audio, the decoder reading one window of history.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidInput

HEADROOM = 0.8  # the share of a hop's duration its compute may take
MEASURED_MAX = 4  # streams measured directly; more are extrapolated
AUTO_HOPS_MS = (100, 200, 400, 800, 1600)  # what "auto" tries, smallest first


@dataclass(frozen=True)
class Budget:
    """Measured hop costs at one setting -> what it holds."""

    hop_ms: int
    lookahead_ms: int
    context_ms: int
    hop_s: dict[int, float]  # streams -> seconds of one batched hop (measured)

    def seconds(self, streams: int) -> float:
        """One batched hop of `streams` streams (linear through the measured points)."""
        (n0, t0), (n1, t1) = min(self.hop_s.items()), max(self.hop_s.items())
        if n1 == n0:
            return t0 * streams / n0
        return max(t0, t0 + (t1 - t0) * (streams - n0) / (n1 - n0))

    def holds(self, most: int = 1024) -> int:
        """Live streams that keep up in real time (0: not even one)."""
        limit = HEADROOM * self.hop_ms / 1000
        return max((n for n in range(1, most + 1) if self.seconds(n) <= limit), default=0)

    def latency_ms(self, streams: int) -> float:
        """Worst frame's latency with `streams` live: the algorithmic latency (hop + lookahead +
        the 5 ms of the CNN's last frame) plus one hop's compute."""
        return self.hop_ms + self.lookahead_ms + 5 + 1000 * self.seconds(streams)

    def describe(self, streams: int) -> str:
        held = self.holds()
        line = f"a hop of {self.hop_ms} ms takes {1000 * self.seconds(1):.0f} ms for 1 stream"
        if streams > 1:
            measured = "" if streams in self.hop_s else " (extrapolated)"
            line += f", {1000 * self.seconds(streams):.0f} ms for {streams}{measured}"
        line += f": holds {held} live stream{'s' if held != 1 else ''} in real time"
        if held:
            line += f", latency {self.latency_ms(min(held, streams)):.0f} ms"
        return line


def measure(model, device, dtype, *, hop_ms: int, lookahead_ms: int, context_ms: int, streams: int) -> Budget:
    """Time a steady batched hop at 1 and min(streams, MEASURED_MAX) streams on this machine."""
    from .engine import StreamEngine

    if streams < 1:
        raise InvalidInput(f"streams must be >= 1, got {streams}")
    engine = StreamEngine(model, device, dtype, max_streams=1, hop_ms=hop_ms, lookahead_ms=lookahead_ms,
                          context_ms=context_ms, max_cache_s=1.0)  # for its settings and windows only
    points = sorted({1, min(streams, MEASURED_MAX)})
    return Budget(hop_ms, lookahead_ms, context_ms, {n: engine.time_steady_hop(n, repeats=1) for n in points})


def choose_hop(model, device, dtype, *, lookahead_ms: int, context_ms: int, streams: int,
               report=None) -> Budget:
    """The smallest hop of AUTO_HOPS_MS whose budget holds `streams` streams; the largest when
    none does (its `holds()` says how short it falls). report(budget) after each one tried."""
    budget = None
    for hop_ms in AUTO_HOPS_MS:
        budget = measure(model, device, dtype, hop_ms=hop_ms, lookahead_ms=lookahead_ms, context_ms=context_ms,
                         streams=streams)
        if report is not None:
            report(budget)
        if budget.holds() >= streams:
            break
    return budget
