"""The newcomer's frictions, each fixed: errors that name what is supported and speak in flags,
`send` checking its own arguments before it connects, the preview's emotion panel from a .json,
a warning when the audio is another length, GIF previews capped, a bfloat16 directory that says
why it runs in float32, and bench's wording."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from emotalk_fast.model import checkpoint as ckpt
from emotalk_fast.tools.bench import format_bench
from emotalk_fast.model.config import EmoTalkConfig
from helpers import espeak_speech, free_port

SCRIPT = str(Path(sys.executable).with_name("emotalk-fast"))


def cli(*args, stdin: bytes | None = None, timeout=300):
    r = subprocess.run([SCRIPT, *map(str, args)], input=stdin, capture_output=True, timeout=timeout)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("frictions")
    soundfile.write(str(d / "speech.wav"), espeak_speech("Small things a new user meets.", speed=180), 16000)
    (d / "empty.wav").write_bytes(b"")
    soundfile.write(str(d / "short.wav"), np.zeros(400, np.float32), 16000)  # 25 ms: shorter than the CNN reads
    (d / "voice.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A not really")
    return d


def test_unreadable_audio_names_what_is_read(files):
    for args, stdin, words in ((["-"], b"hi\n", "cannot read audio from stdin"),
                               ([files / "voice.m4a"], None, f"cannot read audio from {files / 'voice.m4a'}"),
                               ([files / "empty.wav"], None, "is empty (0 bytes): no audio"),
                               ([files / "short.wav"], None, "short.wav is too short: 400 samples at 16 kHz (25.0 ms); "
                                                             "need at least 720 (45.0 ms)"),
                               (["-"], (files / "short.wav").read_bytes(), "audio is too short: 400 samples")):
        code, _, err = cli("animate", *args, "-o", files / "out.csv", "--random-weights", "mini", stdin=stdin)
        line = err.strip().splitlines()[-1]
        assert code == 1 and words in line, err
        assert "object at 0x" not in err and "Traceback" not in err
        assert "[animate] loading" not in err  # refused before the model loads
        if "cannot read" in words:
            assert "expected WAV, FLAC, OGG/Vorbis, OGG/Opus or MP3" in line


@pytest.mark.parametrize("args, words", [
    (["stream", "speech.wav", "--random-weights", "tiny", "--hop-ms", "150"],
     "emotalk-fast stream: error: argument --hop-ms: --hop-ms must be a positive multiple of 100 ms"),
    (["animate", "speech.wav", "--random-weights", "huge"],
     "emotalk-fast animate: error: argument --random-weights: invalid choice: 'huge'"),
    (["send", "speech.wav", "--level", "x"], "emotalk-fast send: error: argument --level"),
    ([], "emotalk-fast: error: the following arguments are required: command"),
])
def test_a_bad_option_is_one_line_naming_help(args, words):
    code, out, err = cli(*args)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(words), err
    command = " ".join(["emotalk-fast", *args[:1]])
    assert err.rstrip().endswith(f"(see {command} --help)") and "usage:" not in err


def test_a_closed_pipe_ends_the_command_quietly(files, monkeypatch, capsys):
    """`emotalk-fast ... | head`: the reader leaves early; the command stops without an error line."""
    import os

    from emotalk_fast.cli import main

    read, write = os.pipe()
    os.close(read)  # the reader is gone: every write raises BrokenPipeError (Python ignores SIGPIPE)
    monkeypatch.setattr(sys, "stdout", open(write, "w", buffering=1))
    code = main(["animate", str(files / "speech.wav"), "-o", "-", "--random-weights", "mini"])
    err = capsys.readouterr().err
    assert code == 141  # as a writer stopped by the closed pipe: 128 + SIGPIPE
    assert "Broken pipe" not in err and "error" not in err, err


def test_smoke_data_without_espeak_ng_says_what_to_install(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()  # a PATH without espeak-ng
    r = subprocess.run([sys.executable, "-m", "emotalk_fast.training.smoke_data", str(tmp_path / "smoke")],
                       capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "PATH": str(empty)})
    assert r.returncode == 1 and r.stderr.strip() == (
        "smoke_data: error: espeak-ng is not installed (Debian/Ubuntu: sudo apt-get install espeak-ng; macOS: "
        "brew install espeak-ng)"), r.stderr
    assert not (tmp_path / "smoke").exists()  # no empty folder left behind


def test_install_hints_name_the_packages_and_the_clone_never_an_index():
    """The project is not on a package index: no message or page says `pip install "emotalk-fast[x]"`;
    a missing extra's message names its packages, read from pyproject.toml's list."""
    import re
    import tomllib

    from emotalk_fast.errors import install_hint

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    onnx = [re.split(r"[<>=!~; ]", r)[0] for r in extras["onnx"]]
    assert install_hint("onnx") == f'pip install {" ".join(onnx)} (pip install -e ".[onnx]" in the emotalk_fast clone)'
    pages = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "emotalk_fast").rglob("*.py")]
    said = [str(p) for p in pages if re.search(r"""pip install ['"]?emotalk-fast\[""", p.read_text())]
    assert said == []


def test_checkpoint_errors_say_what_to_pass_instead(files, tmp_path):
    only_pth = tmp_path / "release"
    only_pth.mkdir()
    torch.save(ckpt.random_release_state_dict(EmoTalkConfig.from_name("mini"), 0), only_pth / "EmoTalk.pth")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "wav2vec2", "hidden_size": 1024}))
    for checkpoint, words in (
            (only_pth, f"{only_pth} is not an emotalk_fast checkpoint: config.json is missing: pass the file itself "
                       f"({only_pth / 'EmoTalk.pth'})"),
            (hf, f"{hf / 'config.json'} is not an emotalk_fast config (it has no format_version; a Hugging Face "
                 "model's config.json?)"),
            (tmp_path / "EmoTalk.pth", "checkpoint not found: " + str(tmp_path / "EmoTalk.pth") + " (no weights come "
                                       "with the library: give the release's EmoTalk.pth, or try the model on random "
                                       "weights: --random-weights PRESET")):
        code, _, err = cli("animate", files / "speech.wav", "-o", tmp_path / "out.csv", "--checkpoint", checkpoint)
        assert code == 1 and err.count("\n") == 1 and words in err, err
    code, _, err = cli("animate", files / "speech.wav", "-o", tmp_path / "out.csv", "--checkpoint",
                       only_pth / "EmoTalk.pth")
    assert code == 0, err  # what the message said to pass


def test_the_readmes_first_result_writes_only_where_git_ignores():
    """A fresh clone stays clean: the README's toy recipe writes under smoke/ and runs/, both ignored."""
    import re

    root = Path(__file__).resolve().parents[2]
    section = root.joinpath("README.md").read_text().split("## A first result")[1].split("\n## ")[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    written = re.findall(r"(?:-o|train \S+) (\S+)", block) + re.findall(r"smoke_data (\S+)", block)
    ignored = root.joinpath(".gitignore").read_text().split()
    assert written and all(any(w.startswith(i.rstrip("/") + "/") or w == i.rstrip("/") for i in ignored)
                           for w in written), (written, ignored)


def test_one_rule_for_every_output_file(files, tmp_path):
    """README: one output file is replaced; its folder must exist, refused in the same words by
    every command before any work."""
    anim = tmp_path / "a.csv"
    for args, out in ((["animate", files / "speech.wav", "--random-weights", "mini", "-o"], "x.csv"),
                      (["preview", anim, "-o"], "x.png"),
                      (["export-onnx", "--random-weights", "mini", "-o"], "x.onnx")):
        missing = tmp_path / "missing" / out
        anim.write_text("")  # preview's input: any file will do until the folder is checked
        code, _, err = cli(*args, missing)
        assert code == 1 and err.strip() == f"emotalk-fast {args[0]}: error: cannot save {missing}: directory " \
                                             f"{missing.parent} does not exist", err
    for _ in range(2):  # the second run replaces the first's file
        code, _, err = cli("animate", files / "speech.wav", "--random-weights", "mini", "-o", anim)
        assert code == 0 and anim.read_text().startswith("frame,"), err
    code, _, err = cli("preview", anim, "-o", tmp_path / "a.png")
    code, _, err = cli("preview", anim, "-o", tmp_path / "a.png")
    assert code == 0 and (tmp_path / "a.png").stat().st_size > 0, err


def test_a_live_stream_says_the_latency_of_this_machine_and_what_to_do_when_behind(files):
    """stream --realtime measures its hop at start-up (which also warms the kernels up for the
    first hops) and says the latency with this machine's compute; a stream that falls behind
    says how to pick a hop that keeps up."""
    import re

    from emotalk_fast.cli.stream import verdict

    code, out, err = cli("stream", files / "speech.wav", "--random-weights", "mini", "--realtime", "--hop-ms", "200",
                         "--encoders", "torch")
    assert code == 0, err
    m = re.search(r"algorithmic latency (\d+) ms, (\d+) ms with this machine's compute", out)
    assert m and int(m.group(2)) >= int(m.group(1)), out
    assert "a hop of 200 ms takes" in err  # the measurement, said
    assert verdict(0.5, False) == "keeps up"
    assert verdict(1.3, False) == "falls behind: --realtime --hop-ms auto picks the shortest hop this machine keeps up at"
    assert verdict(1.3, True) == "falls behind: a longer --hop-ms"


def test_send_checks_its_arguments_before_connecting(files):
    address = f"127.0.0.1:{free_port()}"  # nothing listens: a check that connected first would say so
    for flag, value, words in (("--level", 2, "--level must be in [0, 1], got 2"),
                               ("--person", -1, "--person must be >= 0"), ("--chunk-s", 0, "--chunk-s must be > 0")):
        t0 = time.monotonic()
        code, _, err = cli("send", files / "speech.wav", "--server", address, flag, value, "--timeout", 5)
        assert code == 1 and words in err.strip().splitlines()[-1], err
        assert time.monotonic() - t0 < 30
    code, _, err = cli("send", files / "missing.wav", "--server", address)
    assert code == 1 and "audio file not found" in err


def test_a_short_stream_is_refused_in_plain_words():
    from emotalk_fast import Animator

    stream = Animator.from_config("mini", seed=0, device="cpu").stream()
    stream.push(np.zeros(200, np.float32))
    with pytest.raises(ValueError) as e:
        stream.flush()
    assert str(e.value) == "the audio is too short to animate: 12.5 ms (at least 25 ms)"


def test_preview_draws_the_emotion_of_a_json_and_warns_on_another_length(files, monkeypatch, capsys):
    import emotalk_fast.io.preview as preview
    from emotalk_fast.cli import main

    anim = files / "anim.json"
    code, _, err = cli("animate", files / "speech.wav", "-o", anim, "--random-weights", "mini")
    assert code == 0, err
    emotion = json.loads(anim.read_text())["emotion"]
    seen = {}
    monkeypatch.setattr(preview, "save_preview", lambda path, *a, **kw: seen.update(kw) or Path(path))
    other = files / "other.wav"
    soundfile.write(str(other), np.zeros(16000 * 5, np.float32), 16000)  # 5 s: not this take
    main(["preview", str(anim), "-o", str(files / "p.png"), "--audio", str(other)])
    assert seen["emotion_timeline"] == [(0.0, emotion)]
    assert "warning: the audio is 5.00 s but the animation" in capsys.readouterr().err
    main(["preview", str(anim), "-o", str(files / "p.png"), "--audio", str(files / "speech.wav")])
    assert "warning" not in capsys.readouterr().err


def test_gif_previews_are_capped(files):
    long = files / "long.npy"
    np.save(long, np.zeros((30 * 12, 52), np.float32))  # 12 s
    t0 = time.monotonic()
    code, _, err = cli("preview", long, "-o", files / "long.gif")
    assert code == 1 and "a GIF preview is limited to 10 s" in err and "write an .mp4 instead" in err
    assert time.monotonic() - t0 < 30 and not (files / "long.gif").exists()


def test_a_bfloat16_directory_says_why_it_runs_in_float32(files):
    cfg = EmoTalkConfig.from_name("mini")
    sd = ckpt.release_to_fast(ckpt.random_release_state_dict(cfg, 0, "fast"), cfg)
    ckpt.save_pretrained({k: v.to(torch.bfloat16) for k, v in sd.items()}, cfg, files / "bf16")
    code, _, err = cli("animate", files / "speech.wav", "-o", files / "b.csv", "--checkpoint", files / "bf16",
                       "--device", "cpu")
    assert code == 0, err
    assert "is stored in bfloat16 and runs in float32" in err and "--dtype bfloat16" in err
    code, _, err = cli("animate", files / "speech.wav", "-o", files / "c.csv", "--checkpoint", files / "bf16",
                       "--device", "cpu", "--dtype", "float32")
    assert code == 0 and "stored in" not in err


def test_bench_wording():
    result = {"device": "cpu", "dtype": "float32", "encoders": "int8", "backend": "torch", "parameters": 1e6, "torch": "2.x",
              "cpu": "AVX2, bfloat16 emulated", "torch_threads": 1, "audio_seconds": 1.0, "frames": 30,
              "median_seconds": 0.5, "seconds": [0.5], "real_time_factor": 0.5, "ms_per_audio_second": 500.0,
              "startup_seconds": None, "user_process_peak_mb": None, "peak_memory_mb": 100.0,
              "memory_kind": "resident set", "run_memory_mb": 10.0, "bench_process_peak_mb": 200.0,
              "live_hop_ms": 370.2, "live_hop_encoding": "incremental", "encoder_weight_bytes": 2.43e9,
              "read_bandwidth_gbs": 17.24, "hop_floor_ms": 141.0, "hop_over_floor": 2.63}
    text = format_bench(result)
    assert "1 torch thread" in text and "1 torch threads" not in text and "CPU AVX2, bfloat16 emulated" in text
    assert "start-up test" not in text and "(it also built random weights)" in text
    assert "2.0x faster than real time offline" in text and "float32, int8 encoders, backend torch" in text
    assert "re-encode" not in text  # live streams encode each frame once: the live hop line says what one costs
    assert ("a live hop of 100 ms (incremental) takes 370 ms for 1 stream: 2.6x its memory floor of 141 ms "
            "(2.43 GB of encoder weights at 17.2 GB/s)") in text
    assert "1.3x slower than real time" in format_bench(dict(result, real_time_factor=1.34))
    assert "ran the start-up test" in format_bench(dict(result, startup_seconds=1.0, user_process_peak_mb=1.0,
                                                        torch_threads=2))


def test_threads_option(files):
    code, out, err = cli("stream", files / "speech.wav", "--random-weights", "mini", "--threads", "1")
    assert code == 0 and "real-time factor" in out and "; 1 torch thread" in out, err
    code, out, err = cli("stream", files / "speech.wav", "--random-weights", "tiny")  # as serve: one core left
    threads = max(1, torch.get_num_threads() - 1)
    assert code == 0 and f"; {threads} torch thread{'s' if threads > 1 else ''}" in out, err
    code, _, err = cli("stream", files / "speech.wav", "--random-weights", "mini", "--threads", "0")
    assert code == 1 and err.strip().splitlines()[-1].endswith("--threads must be >= 1, got 0")
