"""Encoders compiled by OpenVINO (opt-in, `encoders="openvino"`): the same float32 arithmetic as
PyTorch wherever the encoders run (offline, a padded batch of windows, a stream, a shared front
end, audio long enough for the front end's pieces), and the settings it refuses."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from emotalk_fast import Animator
from emotalk_fast.model.config import EmoTalkConfig
from emotalk_fast.model.encoder import FRONT_END_PIECE_FRAMES
from emotalk_fast.errors import InvalidInput
from emotalk_fast.backends.openvino import OpenVINOEncoder
from emotalk_fast.streaming.encoders import WindowedEncoder
from emotalk_fast.streaming.grid import StreamGrid
from emotalk_fast.streaming.settings import StreamSettings
from helpers import espeak_speech

pytest.importorskip("openvino")

TOL = 1e-5  # float32 both, summed in another order: measured ~3e-6 at tiny size


@pytest.fixture(scope="module")
def animators():
    return (Animator.from_config("tiny", seed=4, device="cpu"),
            Animator.from_config("tiny", seed=4, device="cpu", encoders="openvino"))


@pytest.fixture(scope="module")
def speech():
    # 3.4 s: longer than one front-end piece (2 s), so the pieces run through the graph too
    s = espeak_speech("Compiled encoders give the same face, only sooner than before.", speed=170)
    assert len(s) > 320 * FRONT_END_PIECE_FRAMES
    return s


def test_offline_animation_equals_pytorch(animators, speech):
    reference, compiled = animators
    assert isinstance(compiled.model.content_encoder, OpenVINOEncoder) and "openvino encoders" in repr(compiled)
    want, got = reference.animate(speech), compiled.animate(speech)
    assert np.abs(got.blendshapes - want.blendshapes).max() < TOL
    np.testing.assert_allclose(got.emotion_logits, want.emotion_logits, atol=TOL, rtol=0)


def test_a_padded_batch_of_windows_equals_pytorch(animators, speech):
    """The engine's batches: windows of several lengths, zero-padded and masked, at once."""
    reference, compiled = animators
    grid = StreamGrid.for_model(StreamSettings(hop_ms=200, lookahead_ms=200, context_ms=600, ramp=True),
                                reference.config)
    encoders = [WindowedEncoder(a.model, grid) for a in animators]
    windows = [grid.window(k) for k in (0, 1, 3)]  # hops of 100, 200 and 200 ms at three ages
    samples = [torch.from_numpy(speech[w.s0 : w.s1]) for w in windows]
    assert len({len(s) for s in samples}) == 3
    with torch.inference_mode():
        want = encoders[0].encode_batch(samples, windows)
        got = encoders[1].encode_batch(samples, windows)
    for w, g in zip(want, got):
        assert g.shape == w.shape and float((g - w).abs().max()) < TOL


def test_a_stream_equals_pytorch(animators, speech):
    settings = dict(hop_ms=100, lookahead_ms=200, context_ms=1000, emotion_hop_ms=300, whole_utterance_ms=0,
                    encoding="windowed")  # OpenVINO compiles each transformer whole: incremental refuses it
    out = []
    for animator in animators:
        stream = animator.stream(**settings)
        out.append(np.concatenate([stream.push(speech[i : i + 1600]) for i in range(0, len(speech), 1600)]
                                  + [stream.flush()]))
    assert out[0].shape == out[1].shape and np.abs(out[0] - out[1]).max() < TOL


def test_incremental_encoding_refuses_them_and_the_cli_streams_windowed(animators):
    from emotalk_fast.cli import build_parser
    from emotalk_fast.cli.options import stream_settings

    with pytest.raises(ValueError, match="the OpenVINO encoders run windowed encoding: not encoding incremental"):
        animators[1].stream(encoding="incremental")
    assert animators[1].stream().settings.encoding == "windowed"  # the default, where it runs
    parse = build_parser().parse_args
    assert stream_settings(parse(["serve", "--random-weights", "tiny", "--encoders", "openvino"])).encoding == "windowed"
    assert stream_settings(parse(["serve", "--random-weights", "tiny"])).encoding == "incremental"


def test_a_shared_front_end_stays_shared_and_exact(speech):
    """A checkpoint whose two encoders have one front end computes it once; so does its graph."""
    cfg = EmoTalkConfig.from_name("tiny")
    reference = Animator.from_config(cfg, seed=5, device="cpu")
    state = reference.model.state_dict()
    for k in [k for k in state if k.startswith("emotion_encoder.front_end.")]:
        state[k] = state[k.replace("emotion_encoder", "content_encoder")]
    reference = Animator.from_state_dict(cfg, dict(state), device="cpu")
    compiled = Animator.from_state_dict(cfg, dict(state), device="cpu", encoders="openvino")
    assert reference.model.shares_front_end and compiled.model.shares_front_end
    assert np.abs(compiled.animate(speech).blendshapes - reference.animate(speech).blendshapes).max() < TOL


def test_openvino_encoders_refuse_what_they_cannot_run(monkeypatch):
    with pytest.raises(ValueError, match="CPU in float32"):
        Animator.from_config("tiny", device="cpu", dtype="bfloat16", encoders="openvino")
    with pytest.raises(ValueError, match="encoders must be one of torch, int8, openvino, onnx.*, not .tensorrt."):
        Animator.from_config("tiny", device="cpu", encoders="tensorrt")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(InvalidInput, match=r'need openvino: pip install openvino \(pip install -e "\.\[openvino\]" in the emotalk_fast clone\)'):
        Animator.from_config("tiny", device="cpu", encoders="openvino")


def test_the_cli_runs_openvino_encoders(tmp_path, speech):
    import soundfile

    wav = tmp_path / "speech.wav"
    soundfile.write(str(wav), speech, 16000)
    run = [sys.executable, "-m", "emotalk_fast", "animate", str(wav), "--random-weights", "tiny"]
    outputs = []
    for extra in ((), ("--encoders", "openvino")):
        out = tmp_path / f"out{len(extra)}.csv"
        r = subprocess.run(run + ["-o", str(out), *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outputs.append(np.loadtxt(out, delimiter=",", skiprows=1))
    assert outputs[0].shape == outputs[1].shape and np.abs(outputs[0] - outputs[1]).max() < 1e-4
    r = subprocess.run(run + ["-o", str(tmp_path / "x.csv"), "--encoders", "openvino", "--dtype", "bf16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().endswith("--encoders openvino runs on the CPU in float32: drop "
                                                            "--dtype and --device")
