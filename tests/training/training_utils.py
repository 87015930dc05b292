"""Shared set-up for the training tests: the espeak-ng smoke dataset, made once per session."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

_CACHE: dict[str, Path] = {}
# A subset where every labelled clip has cross partners: person 1, neutral and happy at level 0,
# both sentences, plus one unlabelled clip (self-reconstruction only).
SUBSET = ("03-01-01-01-01-01-01", "03-01-01-01-02-01-01", "03-01-03-01-01-01-01", "03-01-03-01-02-01-01",
          "unlabelled_0")


def smoke_dataset(tmp_path_factory) -> Path:
    """2 persons x 2 sentences x 7 emotion/level combinations + 1 unlabelled clip (29 clips)."""
    if "full" not in _CACHE:
        if shutil.which("espeak-ng") is None:
            pytest.skip("espeak-ng is not installed")
        from emotalk_fast.training.smoke_data import generate

        root = tmp_path_factory.mktemp("smoke_data")
        generate(root, persons=2, unlabelled=1)
        _CACHE["full"] = root
    return _CACHE["full"]


def smoke_subset(tmp_path_factory) -> Path:
    """The five clips of SUBSET (fast loops: 2 steps per epoch at batch 2)."""
    if "subset" not in _CACHE:
        full = smoke_dataset(tmp_path_factory)
        root = tmp_path_factory.mktemp("smoke_subset")
        for stem in SUBSET:
            for ext in (".wav", ".npy"):
                shutil.copy(full / f"{stem}{ext}", root / f"{stem}{ext}")
        _CACHE["subset"] = root
    return _CACHE["subset"]


@pytest.fixture
def one_thread():
    """Single-threaded torch: on a small shared CPU, two spinning OpenMP threads per process
    can run 30x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
