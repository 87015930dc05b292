"""What a new user meets on the command line (the installed console script): no random weights
by accident, bad options refused before the model loads, folders, many files, shards, pipes,
warnings for ignored options, --version, help text."""
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.model.checkpoint import random_release_state_dict
from helpers import espeak_speech

SCRIPT = str(Path(sys.executable).with_name("emotalk-fast"))


def cli(*args, stdin: bytes | None = None, cwd=None, timeout=300):
    return subprocess.run([SCRIPT, *map(str, args)], input=stdin, capture_output=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    torch.save(random_release_state_dict(EmoTalkConfig.from_name("tiny"), seed=2), d / "EmoTalk.pth")
    lines = d / "lines"
    (lines / "act1").mkdir(parents=True)
    soundfile.write(lines / "hello.wav", espeak_speech("Hello there.", rate=22050), 22050)
    soundfile.write(lines / "act1" / "bye.flac", espeak_speech("Goodbye for now, friend.", rate=48000), 48000)
    soundfile.write(lines / "act1" / "wait.wav", espeak_speech("Wait a moment please.", rate=16000), 16000)
    (lines / "act1" / "broken.wav").write_bytes(b"RIFF this is not audio")
    soundfile.write(d / "single.wav", espeak_speech("Just one line.", rate=16000), 16000, subtype="PCM_16")
    return d


def test_stream_and_animate_need_a_model_named(corpus):
    for command in (["stream", corpus / "single.wav"], ["stream-eval"], ["animate", corpus / "single.wav", "-o", "x.csv"]):
        r = cli(*command)
        assert r.returncode == 2 and b"one of the arguments --checkpoint --random-weights is required" in r.stderr
    out = corpus / "random.json"
    r = cli("stream", corpus / "single.wav", "-o", out, "--random-weights", "tiny", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert b"RANDOM weights (tiny preset)" in r.stderr
    assert json.loads(out.read_text())["metadata"]["random_weights"] == "tiny"


@pytest.mark.parametrize("args,message", [
    (["-o", "missing_dir/out.csv"], "directory missing_dir does not exist"),
    (["-o", "out.txt"], "must end in .csv, .npy or .json"),
    (["-o", "out.npy", "--format", "livelinkface"], "writes a .csv file"),
    (["-o", "out.csv", "--person", "30"], "person must be in 0..23"),
    (["-o", "out.csv", "--level", "2"], "level must be in 0..1"),
    (["-o", "out.csv", "--num-frames", "100000"], "more than 10x"),
    (["-o", "out.csv", "--shard", "3/2"], "1 <= K <= N"),
])
def test_bad_options_fail_before_the_model_loads(corpus, args, message):
    # a release-size checkpoint would take seconds to load; these fail before that
    t0 = time.monotonic()
    r = cli("animate", "single.wav", "--checkpoint", "EmoTalk.pth", *args, cwd=corpus)
    assert r.returncode == 1
    assert message in r.stderr.decode() and len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
    assert "load" not in r.stdout.decode()
    assert time.monotonic() - t0 < 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_errors_speak_cli(corpus):
    r = cli("animate", "single.wav", "-o", "x.csv", "--random-weights", "tiny", "--device", "cuda", cwd=corpus)
    assert r.returncode == 1 and b"device cuda requested but CUDA is not available: use device cpu or auto" in r.stderr
    r = cli("stream-eval", "--random-weights", "tiny", "--contexts", "1000;2000")
    assert r.returncode == 1 and b"--contexts takes milliseconds separated by commas" in r.stderr


def test_stream_eval_says_what_its_floor_row_is():
    r = cli("stream-eval", "--random-weights", "mini", "--seconds", "2", "--contexts", "1000", "--lookaheads", "200")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "| whole clip (floor) | whole clip |" in out
    assert "whole clip (floor): the clip as one stream window" in out and "no stream setting lands closer" in out


def test_a_folder_of_files_mirrored_batched_with_failures_reported(corpus, tmp_path):
    out = tmp_path / "anims"
    r = cli("animate", corpus / "lines", corpus / "single.wav", "-o", f"{out}/", "--checkpoint",
            corpus / "EmoTalk.pth", "--device", "cpu", "--batch-size", "2", "--person", "5")
    assert r.returncode == 1  # one file is broken: the others are written, the failure named
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.csv"))
    assert written == ["act1/bye.csv", "act1/wait.csv", "hello.csv", "single.csv"]
    err = r.stderr.decode()
    assert "failed: " in err and "broken.wav" in err and "[animate] 5/5 files" in err
    assert "4 animated, 0 skipped" in r.stdout.decode() and "1 failed" in r.stdout.decode()
    # each equals animating the file alone
    animator = Animator.from_pretrained(corpus / "EmoTalk.pth", device="cpu")
    want = animator.animate(corpus / "lines" / "act1" / "bye.flac", person=5).blendshapes
    got = np.array(list(csv.reader(open(out / "act1" / "bye.csv")))[1:], dtype=float)[:, 2:]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a rerun skips what exists unless --overwrite
    (out / "hello.csv").write_text("old")
    r = cli("animate", corpus / "lines", "-o", out, "--checkpoint", corpus / "EmoTalk.pth", "--device", "cpu")
    assert "0 animated, 3 skipped" in r.stdout.decode() and (out / "hello.csv").read_text() == "old"
    r = cli("animate", corpus / "lines", "-o", out, "--checkpoint", corpus / "EmoTalk.pth", "--device", "cpu",
            "--overwrite")
    assert "3 animated, 0 skipped" in r.stdout.decode() and (out / "hello.csv").read_text() != "old"


def test_shards_split_a_corpus_deterministically(corpus, tmp_path):
    got = []
    for k in (1, 2):
        out = tmp_path / f"shard{k}"
        cli("animate", corpus / "lines", "-o", out, "--checkpoint", corpus / "EmoTalk.pth", "--device", "cpu",
            "--shard", f"{k}/2", "--to", "npy")
        got.append({str(p.relative_to(out)) for p in out.rglob("*.npy")})
    assert got[0] and got[1] and not (got[0] & got[1])
    assert got[0] | got[1] == {"hello.npy", "act1/bye.npy", "act1/wait.npy"}  # broken.wav fails in its shard


def test_stdin_to_stdout(corpus):
    r = cli("animate", "-", "-o", "-", "--to", "json", "--checkpoint", corpus / "EmoTalk.pth", "--device", "cpu",
            stdin=(corpus / "single.wav").read_bytes())
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    want = Animator.from_pretrained(corpus / "EmoTalk.pth", device="cpu").animate(corpus / "single.wav")
    np.testing.assert_allclose(np.array(doc["frames"]), want.blendshapes, atol=1e-6)
    assert b"frames" in r.stderr  # the summary goes to stderr when stdout is the data
    r = cli("animate", "-", "-o", "-", "--clamp", "--checkpoint", corpus / "EmoTalk.pth", "--device", "cpu",
            stdin=(corpus / "single.wav").read_bytes())
    rows = np.array(list(csv.reader(io.StringIO(r.stdout.decode())))[1:], dtype=float)[:, 2:]
    np.testing.assert_allclose(rows, np.clip(want.blendshapes, 0, 1), atol=1e-6)
    r = cli("animate", "-", "-o", "x.csv", "--checkpoint", corpus / "EmoTalk.pth", stdin=b"")
    assert r.returncode == 1 and b"stdin is empty" in r.stderr


def test_warnings_for_ignored_options_and_a_cut_short_wav(corpus, tmp_path):
    r = cli("animate", corpus / "single.wav", "-o", tmp_path / "a.csv", "--checkpoint", corpus / "EmoTalk.pth",
            "--device", "cpu", "--crossfade", "0.5", "--seed", "3")
    err = r.stderr.decode()
    assert r.returncode == 0 and "--crossfade only applies with --schedule" in err and "--seed only applies" in err
    r = cli("animate", corpus / "single.wav", "-o", tmp_path / "b.csv", "--checkpoint", corpus / "EmoTalk.pth",
            "--device", "cpu", "--schedule", "0:1:0,0.5:0:3", "--level", "0")
    assert "--level/--person ignored" in r.stderr.decode()
    cut = tmp_path / "cut.wav"
    cut.write_bytes((corpus / "single.wav").read_bytes()[:-8000])  # header still promises the whole clip
    r = cli("animate", cut, "-o", tmp_path / "c.csv", "--checkpoint", corpus / "EmoTalk.pth", "--device", "cpu")
    assert r.returncode == 0 and "shorter than its header says" in r.stderr.decode(), r.stderr


def test_checkpoint_and_convert_messages(corpus, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    r = cli("animate", corpus / "single.wav", "-o", tmp_path / "x.csv", "--checkpoint", text)
    assert r.returncode == 1 and b"is not a checkpoint" in r.stderr
    out = tmp_path / "converted"
    assert cli("convert", corpus / "EmoTalk.pth", out, "--dtype", "bfloat16").returncode == 0
    r = cli("convert", corpus / "EmoTalk.pth", out)
    assert r.returncode == 1 and b"--overwrite" in r.stderr
    assert cli("convert", corpus / "EmoTalk.pth", out, "--overwrite", "--dtype", "bfloat16").returncode == 0
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}
    a = Animator.from_pretrained(out, device="cpu", dtype="bfloat16")
    assert a.model.decoder.cross.weight.dtype == torch.bfloat16


def test_version_module_entry_and_help():
    from emotalk_fast import __version__

    assert cli("--version").stdout.decode().strip() == f"emotalk-fast {__version__}"
    r = subprocess.run([sys.executable, "-m", "emotalk_fast", "--version"], capture_output=True, text=True)
    assert r.stdout.strip() == f"emotalk-fast {__version__}"
    from emotalk_fast.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.dest}: no help text"
    help_text = cli("animate", "--help").stdout.decode()
    assert "(default: 8)" in help_text and "(default: csv)" in help_text
