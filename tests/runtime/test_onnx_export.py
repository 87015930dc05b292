"""The ONNX export: the graph run in ONNX Runtime animates a real clip of its length as the
library does (tiny preset; the release size takes a minute to trace), its metadata names what
it computes, and the command checks its arguments before loading a model."""
import json
import subprocess
import sys

import numpy as np
import pytest

from emotalk_fast import Animator
from emotalk_fast.model.config import BLENDSHAPE_NAMES
from helpers import espeak_speech

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def animator():
    return Animator.from_config("tiny", seed=5, device="cpu")


@pytest.fixture(scope="module")
def exported(animator, tmp_path_factory):
    from emotalk_fast.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    meta = export_onnx(animator.model, path, seconds=1.5)
    return path, meta


def test_onnx_runtime_animates_a_clip_as_the_library_does(animator, exported):
    path, meta = exported
    speech = espeak_speech("Streaming speech, pushed in pieces of every size.", speed=190)[:24000]
    assert meta["num_samples"] == "24000" and meta["num_frames"] == "45"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["wave", "level", "person"]
    for level, person in ((1, 0), (0, 7)):
        want = animator.animate(speech, level=level, person=person)
        onehot = [np.eye(n, dtype=np.float32)[[i]] for n, i in ((2, level), (24, person))]
        blendshapes, logits = session.run(None, {"wave": speech[None], "level": onehot[0], "person": onehot[1]})
        assert blendshapes.shape == (1, 45, 52)
        np.testing.assert_allclose(blendshapes[0], want.blendshapes, atol=1e-4, rtol=0)
        np.testing.assert_allclose(logits[0], want.emotion_logits, atol=1e-4, rtol=0)
    mix = animator.animate(speech, person={3: 0.5, 12: 0.5})  # weights other than one-hot go through as well
    person = np.zeros((1, 24), np.float32)
    person[0, [3, 12]] = 0.5
    got = session.run(None, {"wave": speech[None], "level": np.float32([[0, 1]]), "person": person})[0]
    np.testing.assert_allclose(got[0], mix.blendshapes, atol=1e-4, rtol=0)


def test_the_graph_says_what_it_computes(exported):
    path, _ = exported
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(meta["blendshapes"]) == list(BLENDSHAPE_NAMES) and meta["sample_rate"] == "16000"
    assert len(json.loads(meta["emotion_labels"])) == 7 and meta["fps"] == "30"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "emotalk_fast", "export-onnx", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_the_command_exports_and_checks_the_graph(tmp_path):
    out = tmp_path / "tiny.onnx"
    out.write_bytes(b"an older export")  # one output file: replaced, as every command replaces its own
    r = _cli("--random-weights", "tiny", "-o", out, "--seconds", "1")
    assert r.returncode == 0, r.stderr
    assert "wave [1, 16000] at 16 kHz" in r.stdout and "blendshapes [1, 30, 52]" in r.stdout
    difference = float(r.stdout.split("max abs difference ")[1].split(" ")[0])
    assert out.is_file() and difference < 1e-4
    # the metadata beside it as JSON, and a graph ONNX Runtime 1.17 loads (IR version 9)
    beside = json.loads(out.with_name("tiny.onnx.json").read_text())
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert "its metadata also in tiny.onnx.json" in r.stdout
    assert beside["num_samples"] == int(meta["num_samples"]) == 16000 and beside["blendshapes"] == list(BLENDSHAPE_NAMES)
    assert onnx.load(str(out), load_external_data=False).ir_version <= 9


@pytest.mark.parametrize("args, message", [
    (("-o", "{d}/x.onnx", "--seconds", "0"), "--seconds must be > 0"),
    (("-o", "{d}/x.pt"), "must be a .onnx file"),
    (("-o", "{d}/missing/x.onnx"), "cannot save {d}/missing/x.onnx: directory {d}/missing does not exist"),
    (("-o", "{d}/x.onnx", "--dtype", "bf16"), "the ONNX export is float32"),
])
def test_the_command_refuses_bad_arguments_in_one_line(tmp_path, args, message):
    (tmp_path / "exists.onnx").write_bytes(b"")
    r = _cli("--random-weights", "tiny", *(a.format(d=tmp_path) for a in args))
    assert r.returncode == 1 and message.format(d=tmp_path) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "RANDOM" not in r.stderr  # before the model loads
