"""The streaming ONNX export: examples/onnx_stream.py, ONNX Runtime and numpy alone, streams a
real clip through one export and gets the Python stream's frames at the same settings, whatever
the push sizes; the graph uses only the standard operators named here, at opset 20."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emotalk_fast import Animator
from helpers import espeak_speech

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[2]
# mini: 400 ms hops after a ramp of 100 and 200 ms ones; tiny: 200 ms hops from the start
SETTINGS = {"mini": dict(hop_ms=400, lookahead_ms=200, context_ms=600, max_cache_s=4.0, ramp=True),
            "tiny": dict(hop_ms=200, lookahead_ms=200, context_ms=600, max_cache_s=4.0, ramp=False)}
TOL = 1e-4
# The standard ONNX operators (domain ai.onnx, opset 20) the streaming graph uses, and no others.
# Unity's Inference Engine takes opsets up to 25 (since 2.6) and Unreal's NNE runs ONNX Runtime;
# a change that brings in another operator fails here, to be checked against those engines'
# lists before it is added (docs/game-engines.md names them).
OPERATORS = {
    "Add", "Cast", "Clip", "Concat", "Div", "Expand", "Floor", "Gather", "GatherND", "Gelu", "Gemm",
    "LayerNormalization", "Less", "LessOrEqual", "MatMul", "Max", "Min", "Mod", "Mul", "Not", "Pad", "Pow", "Range",
    "ReduceSum", "Relu", "Reshape", "ScatterND", "Shape", "Slice", "Softmax", "Sqrt", "Squeeze",
    "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
}
OPSET = 20


def _host():
    """examples/onnx_stream.py as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("onnx_stream_example", ROOT / "examples" / "onnx_stream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speech():
    return espeak_speech("A game streams its own voice through one exported graph.", speed=180)


@pytest.fixture(scope="module", params=["mini", "tiny"])
def exported(request, tmp_path_factory):
    from emotalk_fast.export.onnx_stream import export_stream_onnx
    from emotalk_fast.streaming.settings import StreamSettings

    animator = Animator.from_config(request.param, seed=3, device="cpu", warn_random=False)
    path = tmp_path_factory.mktemp("onnx_stream") / f"{request.param}.onnx"
    meta = export_stream_onnx(animator.model, path, StreamSettings(**SETTINGS[request.param]))
    return animator, path, meta, SETTINGS[request.param]


def test_the_onnx_loop_streams_as_the_python_stream(exported, speech):
    animator, path, meta, settings = exported
    assert (meta["hop_frames"], meta["lookahead_frames"], meta["context_frames"]) == \
        (str(settings["hop_ms"] * 3 // 100), "6", "18")
    assert meta["ramp"] == ("true" if settings["ramp"] else "false")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    stream = animator.stream(level=1, person=0, whole_utterance_ms=0, encoding="incremental", **settings)
    want = np.concatenate([stream.push(speech[i : i + 1600]) for i in range(0, len(speech), 1600)] + [stream.flush()])
    host = _host()
    for chunk in (1600, 333, len(speech)):
        got = host.stream_file(session, speech, chunk)
        assert got.shape == want.shape
        err = float(np.abs(got - want).max())
        assert err <= TOL, f"chunk {chunk}: max |ONNX loop - Python stream| = {err:.2e}"
    loop = host.OnnxStream(session)
    loop.push(speech)
    loop.flush()
    np.testing.assert_allclose(loop.emotion_logits, stream.emotion_logits, atol=TOL, rtol=0)  # the label too


def test_the_metadata_sits_beside_the_graph_as_json(exported):
    """Hosts without a metadata API (Unity's Inference Engine) read the same content from a file."""
    import json

    path, meta = exported[1], exported[2]
    beside = json.loads(path.with_name(path.name + ".json").read_text())
    assert set(beside) == set(meta)
    for key, value in meta.items():
        assert beside[key] == (json.loads(value) if value[:1] in "[{0123456789-" or value in ("true", "false")
                               else value), key
    assert beside["hop_frames"] == int(meta["hop_frames"]) and isinstance(beside["state_shapes"], dict)


def test_the_graph_loads_in_older_onnx_runtimes(exported, speech, tmp_path):
    """IR version 9: ONNX Runtime 1.17 (some Unreal NNE releases bundle it) loads the graph. With
    EMOTALK_OLD_ORT_PYTHON (a Python with onnxruntime 1.17.1, numpy and soundfile: what the
    example needs; .ci/run makes one) the
    torch-free loop runs there and streams as the library's stream does."""
    import os

    import soundfile

    animator, path, meta, settings = exported
    assert onnx.load(str(path), load_external_data=False).ir_version <= 9
    python = os.environ.get("EMOTALK_OLD_ORT_PYTHON")
    if not python:
        pytest.skip("set EMOTALK_OLD_ORT_PYTHON to a Python with onnxruntime 1.17.1 (.ci/run makes one)")
    version = subprocess.run([python, "-c", "import onnxruntime; print(onnxruntime.__version__)"], capture_output=True,
                             text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == "1.17.1", version.stderr
    wav, out = tmp_path / "speech.wav", tmp_path / "frames.npy"
    soundfile.write(wav, speech, 16000)
    r = subprocess.run([python, str(ROOT / "examples" / "onnx_stream.py"), str(path), str(wav), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    as_read, _ = soundfile.read(wav, dtype="float32")
    stream = animator.stream(level=1, person=0, whole_utterance_ms=0, encoding="incremental", **settings)
    want = np.concatenate([stream.push(as_read[i : i + 1600]) for i in range(0, len(as_read), 1600)] + [stream.flush()])
    got = np.load(out)
    assert got.shape == want.shape and float(np.abs(got - want).max()) <= TOL


def test_the_graph_uses_only_the_named_operators(exported):
    path = exported[1]
    model = onnx.load(str(path), load_external_data=False)
    assert not model.functions  # every node a standard operator, none inside a local function
    used = {node.op_type for node in model.graph.node}
    assert used <= OPERATORS, f"operators not named here: {sorted(used - OPERATORS)}"
    assert {(o.domain, o.version) for o in model.opset_import} == {("", OPSET)}


def test_the_example_runs_without_torch_or_the_library(exported, speech, tmp_path):
    """The loop as a host runs it: a subprocess in which torch and emotalk_fast cannot import."""
    import soundfile

    path = exported[1]
    wav, out = tmp_path / "speech.wav", tmp_path / "frames.npy"
    soundfile.write(wav, speech, 16000)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in ("torch", "emotalk_fast"):
        (blocker / name).mkdir()
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} must not be needed')\n")
    env = {"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "onnx_stream.py"), str(path), str(wav), "-o", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    frames = np.load(out)
    assert frames.dtype == np.float32 and frames.shape == (int(np.ceil(len(speech) / 16000 * 30)), 52)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(100, np.float32), 16000)
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "onnx_stream.py"), str(path), str(empty), "-o",
                        str(tmp_path / "x.npy")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().endswith("100 samples: too short to animate (at least 400)"), r.stderr
    as_read, _ = soundfile.read(wav, dtype="float32")  # 16-bit PCM: the file's samples, not the array's
    np.testing.assert_array_equal(frames, _host().stream_file(ort.InferenceSession(str(path)), as_read, 1600))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "emotalk_fast", "export-onnx", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_the_command_writes_a_streaming_graph(tmp_path):
    out = tmp_path / "stream.onnx"
    r = _cli("--streaming", "--random-weights", "mini", "-o", out, "--hop-ms", "300", "--context-ms", "1000")
    assert r.returncode == 0, r.stderr
    assert "one hop of 300 ms, lookahead 200 ms, context 1000 ms, decoder history 20 s" in r.stdout
    meta = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert (meta["hop_frames"], meta["context_frames"], meta["cache_frames"]) == ("9", "30", "600")


@pytest.mark.parametrize("args, message", [
    (("--hop-ms", "300"), "--hop-ms: options of export-onnx --streaming"),
    (("--streaming", "--seconds", "2"), "--seconds is the fixed-length graph's"),
    (("--streaming", "--hop-ms", "250"), "--hop-ms must be a positive multiple of 100 ms"),
])
def test_the_command_refuses_mixed_options_in_one_line(tmp_path, args, message):
    r = _cli("--random-weights", "mini", "-o", tmp_path / "x.onnx", *args)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "RANDOM" not in r.stderr  # before the model loads
