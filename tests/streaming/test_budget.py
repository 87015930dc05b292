"""The real-time budget: a hop's measured cost -> the live streams a machine holds, and the
smallest hop that holds a number of streams (hop_ms="auto", --hop-ms auto)."""
import subprocess
import sys
import time

import pytest

from emotalk_fast import Animator
from emotalk_fast.streaming import budget
from emotalk_fast.streaming.budget import AUTO_MAX_HOP_MS, Budget
from emotalk_fast.streaming.settings import StreamSettings
from helpers import die_with_this_process, free_port


@pytest.fixture(scope="module")
def animator():
    return Animator.from_config("mini", seed=0, device="cpu")


DEFAULTS = StreamSettings()  # 100 ms hops, 200 ms lookahead


def test_budget_arithmetic():
    b = Budget(DEFAULTS, {1: 0.02, 4: 0.05})  # 20 ms + 10 ms per further stream
    assert b.seconds(1) == pytest.approx(0.02) and b.seconds(7) == pytest.approx(0.08)
    assert b.holds() == 7  # 80 ms: HEADROOM of a 100 ms hop
    assert b.latency_ms(1) == pytest.approx(100 + 200 + 5 + 20)
    assert Budget(DEFAULTS, {1: 0.2}).holds() == 0
    assert "holds 7 live streams" in b.describe(16) and "(extrapolated)" in b.describe(16)


def test_measure_times_a_steady_hop(animator):
    one_window = StreamSettings(hop_ms=100, lookahead_ms=200, context_ms=1000, emotion_hop_ms=100)  # both branches
    b = budget.measure(animator.model, "cpu", animator.dtype, one_window, streams=8)
    assert set(b.hop_s) == {1, 4} and all(0 < t < 10 for t in b.hop_s.values()) and b.peak_s == b.hop_s


def test_an_emotion_cadence_is_budgeted_by_its_mean_and_its_peak(animator):
    """The emotion branch every third hop: the mean hop pays a third of its run, the latency the
    whole run (the hop that runs it)."""
    b = budget.measure(animator.model, "cpu", animator.dtype,
                       StreamSettings(context_ms=1000, emotion_context_ms=4000, emotion_hop_ms=300,
                                      encoding="windowed"), streams=1)
    assert 0 < b.hop_s[1] < b.peak_s[1] < 10
    assert b.latency_ms(1) == pytest.approx(100 + 200 + 5 + 1000 * b.peak_s[1])
    assert "when it runs the emotion branch" in b.describe(1)
    arithmetic = Budget(DEFAULTS, {1: 0.05}, {1: 0.09})
    assert arithmetic.holds() == 1 and arithmetic.latency_ms(1) == pytest.approx(100 + 200 + 5 + 90)


def test_auto_tries_only_hops_the_emotion_cadence_fits(monkeypatch, animator):
    tried = []

    def fake(model, device, dtype, settings, streams, encoders=None):
        tried.append((settings.hop_ms, settings.emotion_hop_ms))
        return Budget(settings, {1: 1.0})  # holds nothing: the longest fitting hop

    monkeypatch.setattr(budget, "measure", fake)
    b = budget.choose_hop(animator.model, "cpu", animator.dtype, StreamSettings(hop_ms="auto", emotion_hop_ms=400,
                                                                                  encoding="windowed"), 1)
    assert tried == [(200, 400), (400, 400)] and b.hop_ms == 400  # 100 ms: 400 > 100 + 200
    with pytest.raises(ValueError, match="none fits emotion_hop_ms 3300"):
        budget.choose_hop(animator.model, "cpu", animator.dtype,
                          StreamSettings(hop_ms="auto", lookahead_ms=0, emotion_hop_ms=3300, encoding="windowed"), 1)


def _costing(seconds_of_hop):
    """A fake budget.measure whose hop costs seconds_of_hop(hop_ms, streams) (linear in the streams
    through 1 and 4), and the hops it was asked for."""
    tried = []

    def fake(model, device, dtype, settings, streams, encoders=None):
        tried.append(settings.hop_ms)
        return Budget(settings, {n: seconds_of_hop(settings.hop_ms, n) for n in (1, 4)})
    return fake, tried


AUTO = StreamSettings(hop_ms="auto")


@pytest.mark.parametrize("a, b", [(0.2, 0.0), (0.9, 0.4), (0.15, 0.15), (2.0, 0.05), (0.02, 0.79)])
def test_auto_picks_the_smallest_hop_that_holds(monkeypatch, animator, a, b):
    """A hop costing a + b x its length: the first multiple of 100 ms that fits 0.8 of it, found in
    a few measurements, whatever the line (the prediction lands on it or the bisection does)."""
    fake, tried = _costing(lambda hop_ms, n: n * (a + b * hop_ms / 1000))
    monkeypatch.setattr(budget, "measure", fake)
    chosen = budget.choose_hop(animator.model, "cpu", animator.dtype, AUTO, streams=1)
    holding = [h for h in range(100, AUTO_MAX_HOP_MS + 1, 100) if a + b * h / 1000 <= budget.HEADROOM * h / 1000]
    assert chosen.hop_ms == holding[0] and chosen.holds() >= 1
    assert tried[:2] == ([100, AUTO_MAX_HOP_MS] if holding[0] > 100 else [100]) and len(tried) <= 4


def test_auto_confirms_by_measurement_when_the_line_is_wrong(monkeypatch, animator):
    """Costs that are not a line (a step at 1300 ms): the prediction is only a first guess."""
    fake, tried = _costing(lambda hop_ms, n: n * (0.2 if hop_ms < 1300 else 0.5))
    monkeypatch.setattr(budget, "measure", fake)
    assert budget.choose_hop(animator.model, "cpu", animator.dtype, AUTO, streams=1).hop_ms == 300  # 0.2 <= 0.8 x 0.3 s
    fake, tried = _costing(lambda hop_ms, n: n * (0.2 if hop_ms < 1300 else 1.0))
    monkeypatch.setattr(budget, "measure", fake)
    assert budget.choose_hop(animator.model, "cpu", animator.dtype, AUTO, streams=1).hop_ms == 300 and len(tried) <= 8


def test_auto_for_several_streams_and_through_the_api(monkeypatch, animator):
    fake, tried = _costing(lambda hop_ms, n: 0.2 * n)  # 200 ms per stream whatever the hop's length
    monkeypatch.setattr(budget, "measure", fake)
    assert animator.stream(hop_ms="auto").settings.hop_ms == 300  # 200 ms <= 0.8 x 300 ms
    assert animator.engine(max_streams=2, hop_ms="auto").settings.hop_ms == 500  # 400 ms <= 0.8 x 500 ms
    b = budget.choose_hop(animator.model, "cpu", animator.dtype, AUTO, streams=20)
    assert b.hop_ms == AUTO_MAX_HOP_MS and b.holds() < 20  # none holds 20: the longest, which says so


def test_serve_says_what_it_holds_and_warns_past_it():
    """...and on a CPU leaves one core to its network and audio threads, unless told otherwise."""
    import torch

    from emotalk_fast.runtime.threads import cores

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "emotalk_fast", "serve", "--random-weights", "mini", "--port",
                             str(port), "--max-streams", "500", "--live-streams", "500", "--hop-ms", "100",
                             "--max-audio-s", "30", "--context-ms", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_this_process)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            line = proc.stdout.readline()
            if not line or line.startswith("serving"):
                break
        proc.kill()
        _, err = proc.communicate(timeout=30)
        threads = max(1, torch.get_num_threads() - 1)
        at_once = ", each encoder on its own, both at once" if 2 * threads <= cores() else ""
        assert line.startswith("serving") and f"; {threads} torch thread{'s' if threads > 1 else ''}{at_once};" in line
        assert "a hop of 100 ms takes" in err and "ms for 500 (extrapolated): holds" in err
        assert "warning: this machine keeps up with" in err and "of --live-streams 500 at hop 100 ms" in err
        assert "; holds " in line and " live stream" in line
    finally:
        if proc.poll() is None:
            proc.kill()
