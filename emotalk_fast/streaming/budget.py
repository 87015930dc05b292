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

from ..errors import InvalidInput
from ..runtime.memory_floor import MemoryFloor
from .backend import DEFAULT, EncoderBackend
from .grid import StreamGrid
from .settings import GRID_MS, StreamSettings

HEADROOM = 0.8  # the share of a hop's duration its compute may take
MEASURED_MAX = 4  # streams measured directly; more are extrapolated
AUTO_MAX_HOP_MS = 3200  # the longest hop "auto" tries; it tries every multiple of 100 ms up to it


@dataclass(frozen=True)
class Budget:
    """Measured hop costs at one setting -> what it holds."""

    settings: StreamSettings  # a concrete hop
    hop_s: dict[int, float]  # streams -> seconds of one batched hop (measured; the mean over the emotion cadence)
    peak_s: dict[int, float] | None = None  # the same for the hop that runs the emotion branch (default hop_s)
    floor: MemoryFloor | None = None  # the least a hop can take: its weights read once

    @property
    def hop_ms(self) -> int:
        return self.settings.hop_ms

    def seconds(self, streams: int, peak: bool = False) -> float:
        """One batched hop of `streams` streams (linear through the measured points); `peak`: the
        hop that runs the emotion branch, when it runs at a cadence of its own."""
        points = self.peak_s if peak and self.peak_s else self.hop_s
        (n0, t0), (n1, t1) = min(points.items()), max(points.items())
        if n1 == n0:
            return t0 * streams / n0
        return max(t0, t0 + (t1 - t0) * (streams - n0) / (n1 - n0))

    def holds(self, most: int = 1024) -> int:
        """Live streams that keep up in real time (0: not even one)."""
        limit = HEADROOM * self.hop_ms / 1000
        return max((n for n in range(1, most + 1) if self.seconds(n) <= limit), default=0)

    def latency_ms(self, streams: int) -> float:
        """Worst frame's latency with `streams` live: the algorithmic latency plus the compute of
        the costliest hop."""
        return self.settings.latency_ms + 1000 * self.seconds(streams, peak=True)

    def describe(self, streams: int) -> str:
        held = self.holds()
        line = f"a hop of {self.hop_ms} ms takes {1000 * self.seconds(1):.0f} ms for 1 stream"
        if self.floor is not None:
            line += f" ({self.floor.describe(self.seconds(1))})"
        if self.peak_s and self.peak_s != self.hop_s:
            line += f" on average ({1000 * self.seconds(1, peak=True):.0f} ms when it runs the emotion branch)"
        if streams > 1:
            measured = "" if streams in self.hop_s else " (extrapolated)"
            line += f", {1000 * self.seconds(streams):.0f} ms for {streams}{measured}"
        line += f": holds {held} live stream{'s' if held != 1 else ''} in real time"
        if held:
            line += f", latency {self.latency_ms(min(held, streams)):.0f} ms"
        return line


def measure(model, device, dtype, settings: StreamSettings, streams: int, encoders: EncoderBackend = DEFAULT) -> Budget:
    """Time a steady batched hop at 1 and min(streams, MEASURED_MAX) streams on this machine
    (with an emotion branch of its own: the mean over its cadence)."""
    from .executor import time_steady_hop

    if streams < 1:
        raise InvalidInput(f"streams must be >= 1, got {streams}")
    grid = StreamGrid.for_model(settings, model.cfg)
    costs = {n: time_steady_hop(model, device, dtype, grid, n, repeats=1, encoders=encoders)
             for n in sorted({1, min(streams, MEASURED_MAX)})}
    return Budget(settings, {n: c[0] for n, c in costs.items()}, {n: c[1] for n, c in costs.items()},
                  MemoryFloor.of(model, device))


def resolve_hop(model, device, dtype, settings: StreamSettings, streams: int, report=None,
                encoders: EncoderBackend = DEFAULT) -> StreamSettings:
    """The settings with a concrete hop: as given, or for "auto" the smallest hop this machine
    holds `streams` streams at in real time (`choose_hop`, measured now)."""
    if not settings.is_auto:
        return settings
    return choose_hop(model, device, dtype, settings, streams, report, encoders).settings


def choose_hop(model, device, dtype, settings: StreamSettings, streams: int, report=None,
               encoders: EncoderBackend = DEFAULT) -> Budget:
    """The smallest hop (a multiple of 100 ms up to AUTO_MAX_HOP_MS) whose budget holds `streams`
    streams at these settings (their hop aside); the longest when none does (its `holds()` says
    how short it falls). report(budget) after each one measured.

    A hop's cost grows with its window (context + hop + lookahead), so whether it holds is
    monotone in the hop: the shortest and the longest are measured, a line through their costs
    predicts the first that holds, and a bisection seeded there confirms it by measurement (4
    measurements when the costs lie on a line). An `emotion_hop_ms` of its own needs hops it is
    a multiple of, at most hop + lookahead: only those are tried."""
    emotion_hop_ms, lookahead_ms = settings.emotion_hop_ms, settings.lookahead_ms
    hops = [h for h in range(GRID_MS, AUTO_MAX_HOP_MS + 1, GRID_MS)
            if emotion_hop_ms is None or (emotion_hop_ms % h == 0 and emotion_hop_ms <= h + lookahead_ms)]
    if not hops:
        raise InvalidInput(f"hop_ms auto tries multiples of {GRID_MS} ms up to {AUTO_MAX_HOP_MS} ms: none fits "
                           f"emotion_hop_ms {emotion_hop_ms} (a multiple of the hop, at most hop + lookahead); "
                           "give hop_ms")
    measured: dict[int, Budget] = {}

    def holds(i: int) -> bool:
        if i not in measured:
            measured[i] = measure(model, device, dtype, settings.with_hop(hops[i]), streams, encoders)
            if report is not None:
                report(measured[i])
        return measured[i].holds() >= streams

    lo, hi = 0, len(hops) - 1
    if holds(lo):
        return measured[lo]
    if not holds(hi):
        return measured[hi]  # none holds: the longest, whose holds() says how short it falls
    predicted = guess = _first_predicted_to_hold(measured[lo], measured[hi], hops, streams)
    while hi - lo > 1:  # hops[lo] does not hold, hops[hi] does
        mid = guess if lo < guess < hi else (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid
        # after the prediction its neighbour on the open side: on a line, the two settle it
        guess = (mid - 1 if hi == mid else mid + 1) if mid == predicted else -1
    return measured[hi]


def choose_backend(device, dtype, settings: StreamSettings, streams: int, candidates: list[tuple[EncoderBackend, object]],
                   report=None) -> tuple[EncoderBackend, Budget]:
    """The backend, of the (backend, the model it runs) given (each runs these settings here),
    whose budget serves `streams` live streams best -> (backend, its Budget): one that holds them
    before one that does not, then the shorter hop (hop_ms "auto": each backend's own,
    `choose_hop`), then the less compute. report(backend, budget) after each budget measured."""
    results = []
    for backend, model in candidates:
        tell = None if report is None else (lambda b, backend=backend: report(backend, b))
        if settings.is_auto:
            budget = choose_hop(model, device, dtype, settings, streams, tell, backend)
        else:
            budget = measure(model, device, dtype, settings, streams, backend)
            if tell is not None:
                tell(budget)
        results.append((backend, budget))
    return min(results, key=lambda r: (r[1].holds() < streams, r[1].hop_ms, r[1].seconds(streams)))


def _first_predicted_to_hold(short: Budget, long: Budget, hops: list[int], streams: int) -> int:
    """The index of the first hop whose cost, on the line through two measured budgets, fits
    HEADROOM of its duration (-1 if none)."""
    slope = (long.seconds(streams) - short.seconds(streams)) / (long.hop_ms - short.hop_ms)
    return next((i for i, h in enumerate(hops)
                 if short.seconds(streams) + slope * (h - short.hop_ms) <= HEADROOM * h / 1000), -1)
