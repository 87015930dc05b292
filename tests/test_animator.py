"""Animator: inputs of every kind, clear errors, batching, post-processing, saving."""
import csv
import json

import numpy as np
import pytest
import soundfile
import torch

from emotalk_fast import BLENDSHAPE_NAMES, Animator, CheckpointError
from emotalk_fast.model.emotalk import num_frames
from emotalk_fast.model.postprocess import BLINK_TEMPLATES, postprocess
from helpers import assert_close, espeak_speech


@pytest.fixture(scope="module")
def animator():
    return Animator.from_config("tiny", seed=1, device="cpu")


@pytest.fixture(scope="module")
def speech():
    return espeak_speech("Hello there, this is a short test of the animation library.")


def test_animate_real_speech(animator, speech):
    anim = animator.animate(speech, level=1, person=0)
    assert anim.blendshapes.shape == (num_frames(len(speech)), 52)
    assert anim.blendshapes.dtype == np.float32 and np.isfinite(anim.blendshapes).all()
    assert anim.names == BLENDSHAPE_NAMES and anim.fps == 30
    assert anim.emotion_logits.shape == (7,)
    probs = anim.emotion
    assert set(probs) == {"angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"}
    assert abs(sum(probs.values()) - 1) < 1e-6


def test_level_and_person_change_the_output(animator, speech):
    base = animator.animate(speech, level=1, person=0).blendshapes
    assert np.abs(animator.animate(speech, level=0, person=0).blendshapes - base).max() > 1e-3
    assert np.abs(animator.animate(speech, level=1, person=9).blendshapes - base).max() > 1e-3


def test_file_input_any_rate_and_stereo(animator, speech, tmp_path):
    """A 44.1 kHz stereo file equals the same speech given as a 16 kHz mono array."""
    from emotalk_fast.io.audio import resample

    stereo44 = np.stack([resample(speech, 16000, 44100)] * 2)
    path = tmp_path / "speech44k.wav"
    soundfile.write(path, stereo44.T, 44100, subtype="FLOAT")
    from_file = animator.animate(path)
    from_array = animator.animate(stereo44, sample_rate=44100)
    assert_close(from_file.blendshapes, from_array.blendshapes, 1e-6, "file vs array")
    direct = animator.animate(speech)
    assert abs(from_file.num_frames - direct.num_frames) <= 1
    t = min(from_file.num_frames, direct.num_frames)
    # resampling round-trips are not exact; the animation must still agree closely
    assert np.abs(from_file.blendshapes[:t] - direct.blendshapes[:t]).mean() < 0.05


def test_int16_and_tensor_inputs(animator, speech):
    pcm = np.round(np.clip(speech, -1, 1) * 32767).astype(np.int16)
    a = animator.animate(pcm).blendshapes
    b = animator.animate(torch.from_numpy(pcm.astype(np.float32) / 32768)).blendshapes
    assert_close(a, b, 1e-5, "int16 vs tensor")


@pytest.mark.parametrize("bad,match", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros(300, np.float32), "too short"),
    (np.array([0.1, np.nan] * 1000, np.float32), "NaN"),
    (np.array([0.1, np.inf] * 1000, np.float32), "NaN or infinite"),
    (np.zeros((2, 3, 1000), np.float32), "expected \\[N\\] or \\[channels, N\\]"),
    (np.zeros((16000, 2), np.float32), "transpose"),
])
def test_bad_audio_is_a_clear_error(animator, bad, match):
    with pytest.raises(ValueError, match=match):
        animator.animate(bad)


def test_bad_inputs_are_clear_errors(animator, speech, tmp_path):
    with pytest.raises(ValueError, match="unsupported sample rate"):
        animator.animate(speech, sample_rate=100)
    with pytest.raises(FileNotFoundError, match="not found"):
        animator.animate(tmp_path / "missing.wav")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        animator.animate(tmp_path)
    with pytest.raises(TypeError, match="person must be an index 0..23, a mix"):
        animator.animate(speech, person="3")
    with pytest.raises(TypeError, match="level must be an index 0..1, a float"):
        animator.animate(speech, level=True)
    assert animator.animate(speech, sample_rate=16000.0).num_frames == animator.animate(speech).num_frames
    with pytest.raises(ValueError, match="unsupported sample rate"):
        animator.animate(speech, sample_rate=16000.5)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio")
    with pytest.raises(ValueError, match="cannot read audio"):
        animator.animate(junk)
    with pytest.raises(TypeError, match="audio must be a path, a numpy array, a torch tensor or a list of samples, "
                                        "got dict"):
        animator.animate({"samples": 1})
    # docs/python.md: a list of numbers is samples, as an array is
    assert np.array_equal(animator.animate(speech.tolist()).blendshapes, animator.animate(speech).blendshapes)
    for kwargs, match in (({"level": 2}, "level"), ({"level": -1}, "level"),
                          ({"person": 24}, "person"), ({"person": 1.5}, "person")):
        with pytest.raises(ValueError, match=match):
            animator.animate(speech, **kwargs)


def test_shortest_accepted_audio(animator):
    n = animator.min_samples
    assert n == 720  # 45 ms: the emotion branch needs 2 CNN frames
    assert animator.animate(np.random.default_rng(0).standard_normal(n).astype(np.float32)).num_frames == 2
    with pytest.raises(ValueError, match="too short"):
        animator.animate(np.ones(n - 1, np.float32))


def test_animate_batch_matches_single_calls(animator, speech):
    clips = [speech, speech[:9000], speech[4000:30000], speech[:720]]
    levels, persons = [1, 0, 1, 0], [0, 3, 23, 11]
    batch = animator.animate_batch(clips, level=levels, person=persons)
    for clip, lv, p, got in zip(clips, levels, persons, batch):
        one = animator.animate(clip, level=lv, person=p)
        assert_close(got.blendshapes, one.blendshapes, 1e-5, "batch vs single")
        assert_close(got.emotion_logits, one.emotion_logits, 1e-5, "batch logits")
    with pytest.raises(ValueError, match="entries for 4 clips"):
        animator.animate_batch(clips, level=[0, 1])
    with pytest.raises(TypeError):
        animator.animate_batch(speech)


def test_postprocess_is_seeded_and_follows_the_demo(animator, speech):
    raw = animator.animate(speech).blendshapes
    a = animator.animate(speech, postprocess=True, seed=5).blendshapes
    b = animator.animate(speech, postprocess=True, seed=5).blendshapes
    np.testing.assert_array_equal(a, b)
    assert_close(a, postprocess(raw, seed=5), 1e-6, "postprocess")
    from scipy.signal import savgol_filter

    smooth = savgol_filter(raw, 5, 2, axis=0)
    others = [c for c in range(52) if c not in (8, 9)]
    assert_close(a[:, others], smooth[:, others], 1e-5, "smoothing")
    np.testing.assert_array_equal(a[:, 8], a[:, 9])
    blinks = a[:, 8]
    starts = [i for i in range(len(blinks) - 6) if blinks[i:i + 7].tolist() in BLINK_TEMPLATES.tolist()]
    assert starts and starts[0] <= 60
    assert all(60 <= y - x <= 180 for x, y in zip(starts, starts[1:]))


def test_save_formats(animator, speech, tmp_path):
    anim = animator.animate(speech)
    np.testing.assert_array_equal(np.load(anim.save(tmp_path / "a.npy")), anim.blendshapes)
    rows = list(csv.reader(open(anim.save(tmp_path / "a.csv"))))
    assert rows[0] == ["frame", "time", *BLENDSHAPE_NAMES]
    assert len(rows) == anim.num_frames + 1
    assert float(rows[2][1]) == pytest.approx(1 / 30, abs=1e-6)
    assert_close(np.array(rows[1:], dtype=np.float64)[:, 2:], anim.blendshapes, 1e-6, "csv values")
    doc = json.loads(anim.save(tmp_path / "a.json").read_text())
    assert doc["fps"] == 30 and doc["names"] == list(BLENDSHAPE_NAMES)
    assert_close(np.array(doc["frames"]), anim.blendshapes, 1e-7, "json values")
    with pytest.raises(ValueError, match="unknown extension"):
        anim.save(tmp_path / "a.txt")
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_dtype_and_device_arguments():
    assert Animator.from_config("tiny", device="cpu", dtype="bf16").dtype == torch.bfloat16
    assert Animator.from_config("tiny", device="cpu", dtype=torch.float16).dtype == torch.float16
    assert Animator.from_config("tiny", device="cpu").dtype == torch.float32
    with pytest.raises(ValueError, match="unsupported dtype"):
        Animator.from_config("tiny", device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="unknown backend"):
        Animator.from_config("tiny", device="cpu", backend="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Animator.from_config("tiny", device="cuda")


def test_save_pretrained_round_trip(animator, speech, tmp_path):
    animator.save_pretrained(tmp_path / "ckpt")
    again = Animator.from_pretrained(tmp_path / "ckpt", device="cpu")
    np.testing.assert_array_equal(again.animate(speech).blendshapes, animator.animate(speech).blendshapes)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Animator.from_pretrained(tmp_path / "nope.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        Animator.from_pretrained(tmp_path / "empty")


def test_animate_batch_takes_a_rate_per_clip(animator, speech):
    from emotalk_fast.io.audio import resample

    at44 = resample(speech, 16000, 44100)
    a, b = animator.animate_batch([speech, at44], sample_rate=[16000, 44100])
    np.testing.assert_allclose(a.blendshapes, animator.animate(speech).blendshapes, atol=1e-5)
    np.testing.assert_allclose(b.blendshapes, animator.animate(at44, sample_rate=44100).blendshapes, atol=1e-5)
    with pytest.raises(ValueError, match="sample_rate has 1 entries for 2 clips"):
        animator.animate_batch([speech, at44], sample_rate=[16000])


def test_short_reprs_and_clamped_saves(animator, speech, tmp_path):
    anim = animator.animate(speech)
    assert repr(anim).startswith(f"Animation({anim.num_frames} frames, {anim.duration:.2f} s at 30 fps, emotion ")
    assert repr(animator) == "Animator(0.3 M parameters, device cpu, float32, torch encoders, decoder backend torch)"
    stream = animator.stream(sample_rate=48000)
    assert repr(stream).startswith("AnimationStream(48000 Hz, hop 100 ms, lookahead 200 ms, context 2000 ms, "
                                   "latency ") and repr(stream).endswith("0 frames out)")
    assert stream.latency_ms == round(stream.latency_ms, 1)
    assert anim.blendshapes.min() < 0 or anim.blendshapes.max() > 1  # random weights stray outside
    np.testing.assert_allclose(np.load(anim.save(tmp_path / "c.npy", clamp=True)), np.clip(anim.blendshapes, 0, 1))
    np.testing.assert_array_equal(np.load(anim.save(tmp_path / "r.npy")), anim.blendshapes)


def test_the_shortest_audio_offline_and_in_a_stream_as_documented():
    """docs/python.md: offline animation needs 45 ms (720 samples), a stream 25 ms (400)."""
    animator = Animator.from_config("mini", device="cpu", warn_random=False)
    x = (np.random.default_rng(0).standard_normal(480) * 0.1).astype(np.float32)  # 30 ms
    with pytest.raises(ValueError, match=r"need at least 720 \(45.0 ms\)"):
        animator.animate(x)
    stream = animator.stream()
    assert len(stream.push(x)) + len(stream.flush()) == 1
    stream = animator.stream()
    stream.push(x[:399])
    with pytest.raises(ValueError, match="too short to animate: 24.9 ms \\(at least 25 ms\\)"):
        stream.flush()
