"""The emotalk-fast command line, run as a user would (a subprocess of the installed script)."""
import csv
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from emotalk_fast import BLENDSHAPE_NAMES, Animator, EmoTalkConfig
from emotalk_fast.model.checkpoint import random_release_state_dict
from helpers import assert_close, espeak_speech


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "emotalk_fast.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.save(random_release_state_dict(EmoTalkConfig.from_name("tiny"), seed=4), d / "EmoTalk.pth")
    speech = espeak_speech("Testing the command line interface.", rate=22050)
    soundfile.write(d / "speech.wav", speech, 22050)
    return d


@pytest.mark.parametrize("ext", ["csv", "npy", "json"])
def test_animate_writes_each_format(files, ext):
    out = files / f"out.{ext}"
    r = run_cli("animate", files / "speech.wav", "-o", out, "--checkpoint", files / "EmoTalk.pth",
                "--level", 0, "--person", 3, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert out.exists() and "frames" in r.stdout
    want = Animator.from_pretrained(files / "EmoTalk.pth", device="cpu").animate(
        files / "speech.wav", level=0, person=3).blendshapes
    if ext == "npy":
        assert_close(np.load(out), want, 1e-6, "npy")
    elif ext == "csv":
        rows = list(csv.reader(open(out)))
        assert rows[0][2:] == list(BLENDSHAPE_NAMES)
        assert_close(np.array(rows[1:], dtype=float)[:, 2:], want, 1e-6, "csv")


def test_animate_postprocess_is_seeded(files):
    outs = []
    for i in range(2):
        out = files / f"pp{i}.npy"
        r = run_cli("animate", files / "speech.wav", "-o", out, "--checkpoint", files / "EmoTalk.pth",
                    "--postprocess", "--seed", 7)
        assert r.returncode == 0, r.stderr
        outs.append(np.load(out))
    np.testing.assert_array_equal(*outs)


@pytest.mark.parametrize("args,message", [
    (["animate", "missing.wav", "-o", "x.csv", "--checkpoint", "EmoTalk.pth"], "audio file not found"),
    (["animate", "speech.wav", "-o", "x.txt", "--checkpoint", "EmoTalk.pth"], "must end in .csv, .npy or .json"),
    (["animate", "speech.wav", "-o", "x.csv", "--checkpoint", "EmoTalk.pth", "--person", "30"], "person must be"),
    (["animate", "speech.wav", "-o", "x.csv", "--checkpoint", "nope.pth"], "checkpoint not found"),
    (["convert", "missing.pth", "outdir"], "checkpoint not found"),
])
def test_errors_are_one_line(files, args, message):
    r = subprocess.run([sys.executable, "-m", "emotalk_fast.cli", *args], capture_output=True, text=True,
                       cwd=files, timeout=300)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_bench_runs_on_a_small_preset():
    r = run_cli("bench", "--preset", "tiny", "--seconds", 2, "--repeats", 1, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "real-time factor" in r.stdout and "start-up" in r.stdout and "[bench]" in r.stderr
    assert re.search(r"a live hop of 100 ms \(incremental\) takes \d+ ms for 1 stream: [\d.]+x its memory floor of "
                     r"\d+ ms \([\d.]+ GB of encoder weights at [\d.]+ GB/s\)", r.stdout), r.stdout
    # the memory a user's own process needs, and this process's whole peak, both named
    assert "peak memory of a user's process" in r.stdout and "this benchmark process's maximum resident set" in r.stdout


def test_bench_times_int8_encoders_of_the_same_architecture():
    """--encoders int8 through the start-up test's fresh process too; the parameter count is the
    architecture's (int8 weights are buffers, counted)."""
    import json

    runs = [json.loads(run_cli("bench", "--preset", "tiny", "--seconds", 1, "--repeats", 1, "--device", "cpu",
                               "--json", *flag).stdout) for flag in ((), ("--encoders", "int8"))]
    assert [r["encoders"] for r in runs] == ["torch", "int8"] and runs[0]["parameters"] == runs[1]["parameters"]
    assert runs[1]["user_process_peak_mb"] > 0


def test_animate_livelinkface_csv(files):
    from emotalk_fast.bridges.livelink import read_livelink_csv

    out = files / "take.csv"
    r = run_cli("animate", files / "speech.wav", "-o", out, "--checkpoint", files / "EmoTalk.pth",
                "--format", "livelinkface")
    assert r.returncode == 0, r.stderr
    assert out.read_text().startswith("Timecode,BlendShapeCount,")
    want = Animator.from_pretrained(files / "EmoTalk.pth", device="cpu").animate(files / "speech.wav").blendshapes
    got = read_livelink_csv(out).blendshapes
    assert_close(got, np.clip(want, 0.0, 1.0), 1e-6, "livelinkface csv")  # the app's range is [0, 1]


def test_every_stream_setting_is_a_flag_of_the_commands_that_take_it():
    """The stream flags are generated from StreamSettings: a new field needs its entry in
    STREAM_FLAGS, and each command's parser gives StreamSettings' defaults (export-onnx: its own
    decoder history), which stream_settings turns back into the same object."""
    import dataclasses

    from emotalk_fast.cli import build_parser
    from emotalk_fast.cli.options import STREAM_FLAGS, stream_settings
    from emotalk_fast.streaming.settings import EXPORT_MAX_CACHE_S, StreamSettings

    assert set(STREAM_FLAGS) == {f.name for f in dataclasses.fields(StreamSettings)}
    parser = build_parser()
    for command, extra, want in (
            (["stream", "x.wav", "-o", "y.csv"], {}, StreamSettings()),
            (["stream-eval"], {}, StreamSettings()),
            (["export-onnx", "--streaming", "-o", "x.onnx"], {}, StreamSettings(max_cache_s=EXPORT_MAX_CACHE_S))):
        args = parser.parse_args([*command, "--random-weights", "tiny"])
        assert stream_settings(args, **extra) == want, command
    args = parser.parse_args(["stream", "x.wav", "-o", "y.csv", "--random-weights", "tiny", "--hop-ms", "300",
                              "--no-ramp", "--encoding", "windowed", "--emotion-hop-ms", "300"])
    assert stream_settings(args) == StreamSettings(hop_ms=300, ramp=False, encoding="windowed", emotion_hop_ms=300)
    with pytest.raises(SystemExit):  # argparse's own refusal: the export's hop is concrete
        parser.parse_args(["export-onnx", "--streaming", "-o", "x.onnx", "--random-weights", "tiny",
                           "--hop-ms", "auto"])
