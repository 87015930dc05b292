"""The incremental encoders in ONNX Runtime (encoders="onnx"): a stream, an engine of several
streams and the budget run them and give PyTorch's frames; what they cannot run is refused in
one line."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from emotalk_fast import Animator
from emotalk_fast.streaming.engine import StreamEngine
from emotalk_fast.streaming.settings import StreamSettings
from helpers import espeak_speech, stream_all

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOL = 1e-4  # float32 both, summed in other orders: measured ~5e-6 at mini size
SETTINGS = dict(hop_ms=200, lookahead_ms=200, context_ms=600)  # the default ramp and whole-utterance rule


@pytest.fixture(scope="module")
def animators():
    return (Animator.from_config("mini", seed=2, device="cpu", warn_random=False),
            Animator.from_config("mini", seed=2, device="cpu", warn_random=False, encoders="onnx"))


@pytest.fixture(scope="module")
def speech():
    return espeak_speech("The encoders run in another runtime, hop after hop, and nothing moves.", speed=180)


def test_a_stream_equals_pytorch_whatever_the_pushes(animators, speech):
    torch_animator, onnx_animator = animators
    reference = torch_animator.stream(**SETTINGS)
    want = stream_all(reference, speech, [1600], 0)
    for sizes, seed in (([1600], 0), ([0, 1, 333, 7000], 1)):
        stream = onnx_animator.stream(**SETTINGS)
        got = stream_all(stream, speech, sizes, seed)
        assert got.shape == want.shape and np.abs(got - want).max() <= TOL
        np.testing.assert_allclose(stream.emotion_logits, reference.emotion_logits, atol=TOL, rtol=0)


def test_an_engine_of_several_streams_equals_pytorch(animators, speech):
    """Streams that share a step run as one batch through the session, each over its own rings."""
    outputs = []
    for animator in animators:
        engine = StreamEngine(animator.model, "cpu", torch.float32, StreamSettings(**SETTINGS), max_streams=3,
                              encoders=animator.encoder_backend)
        ids = [engine.open(level=i % 2, person=5 * i) for i in range(3)]
        frames = {sid: [] for sid in ids}
        encoder, batches = engine.executor.encoder, []
        run = encoder.encode_inputs
        encoder.encode_inputs = lambda **inputs: batches.append(len(inputs["wave"])) or run(**inputs)
        for k in range(0, len(speech), 1600):
            for i, sid in enumerate(ids):
                if k >= 3200 * i:  # joining at different hops
                    engine.push(sid, speech[k - 3200 * i : k - 3200 * i + 1600])
            while step := engine.step():
                for sid, f in step.items():
                    frames[sid].append(f)
        outputs.append([np.concatenate(frames[sid]) for sid in ids])
        assert max(batches) == 3  # the three streams' hops in one run, in ONNX Runtime as in PyTorch
    for want, got in zip(*outputs):
        assert got.shape == want.shape and len(got) > 30 and np.abs(got - want).max() <= TOL


def test_the_budget_times_them(animators):
    from emotalk_fast.streaming import budget

    onnx = animators[1].encoder_backend
    exported = len(onnx.sessions._sessions)
    b = budget.measure(animators[1].model, "cpu", torch.float32, StreamSettings(**dict(SETTINGS, context_ms=1000)), streams=2,
                       encoders=onnx)
    assert set(b.hop_s) == {1, 2} and all(0 < t < 10 for t in b.hop_s.values())
    assert len(onnx.sessions._sessions) == exported + 1  # its own context: timed through a graph of its own


def test_what_they_cannot_run_is_refused(animators):
    onnx_animator = animators[1]
    with pytest.raises(ValueError, match="the ONNX encoders run incremental encoding: not encoding windowed"):
        onnx_animator.stream(**SETTINGS, encoding="windowed")
    with pytest.raises(ValueError, match="the ONNX encoders run eagerly, without static shapes: not cuda_graphs"):
        onnx_animator.stream(**SETTINGS, cuda_graphs=True)
    with pytest.raises(ValueError, match="the ONNX encoders run a live stream's hops only"):
        onnx_animator.animate(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="run on the CPU in float32"):
        Animator.from_config("mini", device="cpu", dtype="bfloat16", encoders="onnx", warn_random=False)


@pytest.mark.parametrize("args, message", [
    (("animate", "x.wav", "-o", "x.csv"), "--encoders onnx runs a live stream's hops only: use stream or serve"),
    (("stream", "x.wav", "--encoding", "windowed"), "--encoders onnx runs incremental encoding: drop --encoding"),
])
def test_the_cli_refuses_them_where_they_do_not_run(tmp_path, args, message):
    import soundfile

    soundfile.write(tmp_path / "x.wav", np.zeros(16000, np.float32), 16000)
    r = subprocess.run([sys.executable, "-m", "emotalk_fast", *args, "--random-weights", "mini", "--encoders", "onnx"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_the_stream_command_runs_them_and_a_second_start_reads_the_export(tmp_path, speech):
    import soundfile

    soundfile.write(tmp_path / "x.wav", speech, 16000)
    outputs = []
    for run in range(2):
        r = subprocess.run([sys.executable, "-m", "emotalk_fast", "stream", "x.wav", "--random-weights", "mini",
                            "--encoders", "onnx", "--hop-ms", "200", "-o", f"x{run}.npy", "--cache-dir", "cache"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
        assert ("exporting the incremental encoders to ONNX Runtime" in r.stderr) == (run == 0), r.stderr
        assert "incremental encoding" in r.stdout and "the encoders in ONNX Runtime on " in r.stdout
        outputs.append(np.load(tmp_path / f"x{run}.npy"))
    assert outputs[0].shape == (int(np.ceil(len(speech) / 16000 * 30)), 52)
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert len(list((tmp_path / "cache" / "onnx_encoders").glob("*/encoders.onnx"))) == 1


def test_another_animator_of_the_same_weights_reads_the_cached_export(animators, speech):
    """Same weights and contexts: no export (read from the cache), the same frames; other weights:
    an export of their own."""
    first = animators[1]
    again = Animator.from_config("mini", seed=2, device="cpu", warn_random=False, encoders="onnx")
    want, got = (stream_all(a.stream(**SETTINGS), speech, [1600], 0) for a in (first, again))
    assert again.encoder_backend.sessions.loaded_from_cache is True
    np.testing.assert_array_equal(got, want)
    other = Animator.from_config("mini", seed=5, device="cpu", warn_random=False, encoders="onnx")
    other.stream(**SETTINGS)
    assert other.encoder_backend.sessions.loaded_from_cache is False


def test_cache_dir_is_refused_where_nothing_is_exported(tmp_path):
    import soundfile

    soundfile.write(tmp_path / "x.wav", np.zeros(16000, np.float32), 16000)
    r = subprocess.run([sys.executable, "-m", "emotalk_fast", "stream", "x.wav", "--random-weights", "mini",
                        "--encoders", "torch", "--cache-dir", "cache"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode != 0 and "--cache-dir keeps exports, and --encoders torch makes none: drop it" in r.stderr
