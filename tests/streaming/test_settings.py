"""StreamSettings: every stream setting with its default in one place, checked once, the one
latency formula, and the CLI speaking of its flags."""
import ast
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from emotalk_fast import Animator
from emotalk_fast.model.config import EmoTalkConfig
from emotalk_fast.streaming.grid import StreamGrid
from emotalk_fast.streaming.settings import StreamSettings

PACKAGE = Path(__file__).resolve().parents[2] / "emotalk_fast"
NAMES = {f.name for f in fields(StreamSettings)}


def test_no_stream_setting_has_a_default_outside_the_settings():
    """A keyword argument named like a stream setting, with a default other than None, anywhere
    in the package but streaming/settings.py, is a second home for that default."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "settings.py" and path.parent.name == "streaming":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = list(zip(args.args[len(args.args) - len(args.defaults):], args.defaults))
                for arg, default in positional + list(zip(args.kwonlyargs, args.kw_defaults)):
                    if arg.arg in NAMES and default is not None and not (
                            isinstance(default, ast.Constant) and default.value is None):
                        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}({arg.arg}=...)")
    assert not found, found


@pytest.mark.parametrize("changes, message", [
    (dict(hop_ms=150), "hop_ms must be a positive multiple of 100 ms"),
    (dict(hop_ms=0), "hop_ms must be a positive"),
    (dict(lookahead_ms=-100), "lookahead_ms must be a non-negative multiple"),
    (dict(context_ms=2050), "context_ms must be"),
    (dict(emotion_context_ms=50), "emotion_context_ms must be"),
    (dict(hop_ms=300, emotion_hop_ms=200), "emotion_hop_ms must be a multiple of hop_ms"),
    (dict(hop_ms=100, lookahead_ms=200, emotion_hop_ms=400), r"at most hop_ms \+ lookahead_ms \(300"),
    (dict(whole_utterance_ms=-1), "whole_utterance_ms must be a non-negative integer"),
    (dict(ramp="yes"), "ramp must be True or False"),
    (dict(max_cache_s=0), "max_cache_s must be > 0"),
    (dict(hop_ms=True), "hop_ms must be"),
])
def test_settings_are_checked_once_with_the_field_named(changes, message):
    with pytest.raises(ValueError, match=message):
        StreamSettings(**changes)


def test_defaults_and_their_derived_values():
    s = StreamSettings()
    assert (s.hop_ms, s.lookahead_ms, s.context_ms, s.whole_utterance_ms, s.ramp) == (100, 200, 2000, 4000, True)
    assert s.incremental and s.emotion_context == 2000 and s.emotion_hop == 100 and not s.separate_emotion
    windowed = StreamSettings(encoding="windowed")
    assert windowed.emotion_hop == 300 and windowed.separate_emotion  # every third 100 ms hop
    every_hop = StreamSettings(emotion_hop_ms=100, encoding="windowed")
    assert every_hop.emotion_hop == 100 and not every_hop.separate_emotion
    assert StreamSettings(hop_ms=1200, encoding="windowed").emotion_hop == 1200  # the lookahead is shorter than the hop
    auto = StreamSettings(hop_ms="auto", emotion_hop_ms=400, encoding="windowed")  # the relation waits for a concrete hop
    assert auto.is_auto and auto.with_hop(200).emotion_hop == 400
    with pytest.raises(ValueError, match="emotion_hop_ms must be a multiple"):
        auto.with_hop(300)
    with pytest.raises(ValueError, match="resolve it first"):
        auto.latency_ms


@pytest.mark.parametrize("hop_ms", [100, 200, 300, 800, 1200])
@pytest.mark.parametrize("lookahead_ms", [0, 100, 200, 400])
@pytest.mark.parametrize("ramp", [False, True])
def test_one_latency_formula_matches_the_windows(hop_ms, lookahead_ms, ramp):
    """hop + lookahead + the CNN's last 5 ms, as the grid's windows say, at every setting."""
    s = StreamSettings(hop_ms=hop_ms, lookahead_ms=lookahead_ms, context_ms=1000, ramp=ramp)
    grid = StreamGrid.for_model(s, EmoTalkConfig.from_name("emotalk"))
    w = grid.window(grid.steady() + 1)  # a steady hop: from its first frame's instant to its last sample
    assert 1000 * (w.s1 / 16000 - w.h0 / 30) == pytest.approx(s.latency_ms, abs=1e-9)


def test_animator_takes_settings_or_changes_and_refuses_unknown_names():
    animator = Animator.from_config("tiny", device="cpu")
    base = StreamSettings(hop_ms=400, context_ms=1000)
    assert animator.stream(settings=base).settings == base
    assert animator.stream(settings=base, lookahead_ms=100).settings == StreamSettings(hop_ms=400, context_ms=1000,
                                                                                        lookahead_ms=100)
    assert animator.engine(2, hop_ms=200).settings.hop_ms == 200
    with pytest.raises(TypeError, match="unknown stream setting.*hop_size"):
        animator.stream(hop_size=100)
    with pytest.raises(TypeError, match="must be a StreamSettings"):
        animator.stream(settings={"hop_ms": 100})


def test_random_weights_warn_from_python():
    from emotalk_fast.animator import RandomWeightsWarning

    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        Animator.from_config("tiny", device="cpu")


@pytest.mark.parametrize("argv, message", [
    (["--hop-ms", "150"], "argument --hop-ms: --hop-ms must be a positive multiple of 100 ms"),
    (["--context-ms", "abc"], "argument --context-ms: expected an integer number of ms, got 'abc'"),
    (["--hop-ms", "300", "--emotion-hop-ms", "200"], "--emotion-hop-ms must be a multiple of --hop-ms (300)"),
    ([], "cannot read audio from"),  # the input is a Python file: refused before the model loads too
])
def test_the_cli_names_its_flags_before_a_model_loads(argv, message):
    r = subprocess.run([sys.executable, "-m", "emotalk_fast", "stream", str(PACKAGE / "__init__.py"),
                        "--random-weights", "tiny", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "RANDOM weights" not in r.stderr  # refused before the model loaded


def test_a_streamed_json_records_the_settings_it_depends_on(tmp_path):
    import json

    import soundfile

    from helpers import espeak_speech

    wav = tmp_path / "speech.wav"
    soundfile.write(str(wav), espeak_speech("Settings travel with the frames.", speed=190), 16000)
    r = subprocess.run([sys.executable, "-m", "emotalk_fast", "stream", str(wav), "--random-weights", "tiny",
                        "--hop-ms", "200", "--context-ms", "1000", "-o", str(tmp_path / "out.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recorded = json.loads((tmp_path / "out.json").read_text())["metadata"]["stream_settings"]
    assert StreamSettings(**recorded) == StreamSettings(hop_ms=200, context_ms=1000)
