"""`emotalk-fast train` / `eval` handlers (training/cli.py), run in-process."""
import json

import numpy as np
import pytest
import torch

from emotalk_fast.model import checkpoint as ckpt
from emotalk_fast.model.config import EmoTalkConfig
from emotalk_fast.training.cli import main

from training_utils import one_thread, smoke_subset  # noqa: F401 (fixture)


@pytest.fixture(scope="session")
def subset(tmp_path_factory):
    return smoke_subset(tmp_path_factory)


def test_train_resume_eval(subset, tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    common = [str(subset), str(out), "--preset", "tiny", "--batch-size", "2", "--lr", "1e-3", "--log-every", "1",
              "--emotion-map", "calm=sad", "--loss-weights", "1,1,0.5,0.1", "--random-crop-s", "0.5"]
    assert main(["train", *common, "--steps", "2"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert main(["train", *common, "--steps", "3"]) == 1  # no silent overwrite of a run
    assert "already holds a training run (train_state.pt): add --resume to continue it" in capsys.readouterr().err
    assert main(["train", *common, "--steps", "3", "--resume"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 3 and state["train_config"]["emotion_map"]["calm"] == "sad"
    assert state["train_config"]["random_crop_s"] == 0.5
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    cfg, _ = ckpt.load_release_checkpoint(out / "EmoTalk.pth", config=EmoTalkConfig.from_name("tiny"))

    # A 52-blendshape basis on 6 vertices: lips 0-2, eyes 3-5.
    rng = np.random.default_rng(0)
    basis = tmp_path / "basis.npz"
    np.savez(basis, neutral=rng.standard_normal((6, 3)), deltas=rng.standard_normal((52, 6, 3)),
             lip_indices=np.array([0, 1, 2]), eye_indices=np.array([3, 4, 5]))
    report_path = tmp_path / "report.json"
    assert main(["eval", str(out), str(subset), "--basis", str(basis), "--output", str(report_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 5 and {"mse", "mae", "lve", "eve", "lip_l2"} <= set(summary)
    report = json.loads(report_path.read_text())
    assert len(report["per_clip"]) == 5 and len(report["mse_per_channel"]) == 52
    # The bare .pth with an explicit preset gives the same numbers.
    assert main(["eval", str(out / "EmoTalk.pth"), str(subset), "--preset", "tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["mse"] == pytest.approx(summary["mse"], rel=1e-6)


def test_errors_are_one_line(subset, tmp_path, capsys):
    assert main(["train", str(subset), str(tmp_path), "--preset", "tiny", "--loss-weights", "1,2"]) == 1
    assert "four numbers" in capsys.readouterr().err
    assert main(["train", str(subset), str(tmp_path), "--preset", "tiny", "--resume"]) == 1
    assert "cannot resume" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing"), str(tmp_path), "--preset", "tiny"]) == 1
    assert "data directory not found" in capsys.readouterr().err
    assert main(["train", str(subset), str(tmp_path), "--preset", "huge"]) == 1
    assert "unknown preset" in capsys.readouterr().err


def test_train_takes_threads_as_the_other_commands_do(subset, tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["train", str(subset), str(tmp_path / "t"), "--preset", "tiny", "--steps", "1", "--batch-size", "2",
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(["train", str(subset), str(tmp_path / "u"), "--preset", "tiny", "--threads", "0"]) == 1
    assert capsys.readouterr().err.strip().endswith("--threads must be >= 1, got 0")


def test_the_time_left_follows_the_recent_pace():
    """A run that slows down (a busy machine) says so within a few reports: 120 steps left at 0.2
    steps/s is 10 min, however fast the run was before."""
    from emotalk_fast.training.train import _duration, time_left

    paces = [(float(t), t) for t in range(0, 600, 10)]  # 600 steps at 1 step/s
    t, step = paces[-1]
    for _ in range(12):  # then 12 reports of 10 steps at 0.2 steps/s
        t, step = t + 50.0, step + 10
        paces.append((t, step))
    assert _duration(time_left(paces, t, step, step + 120)) == "10 min"
    assert time_left([(0.0, 5)], 0.0, 5, 5) == 0.0 and _duration(time_left([(0.0, 5)], 0.0, 5, 9)) == "unknown"
