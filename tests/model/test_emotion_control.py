"""Emotion control beyond the release: transfer from a reference clip (the training forward's
cross reconstruction), continuous level and person mixes, schedules, emotion readout."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.model.style import Schedule, check_style
from helpers import assert_close, espeak_speech, load_oracle


@pytest.fixture(scope="module")
def oracle_animator():
    return Animator.from_config("mini", seed=0, device="cpu", rule="oracle")  # the oracle's weights


@pytest.fixture(scope="module")
def animator():
    return Animator.from_config("tiny", seed=6, device="cpu")


@pytest.fixture(scope="module")
def speech():
    return espeak_speech("Tell me how you really feel about it today.")


def test_emotion_transfer_reproduces_cross_reconstruction(oracle_animator):
    fx = load_oracle("train_forward")
    style = {"level": int(fx["level"]), "person": int(fx["person"])}
    cross = oracle_animator.animate(fx["input12"], emotion_reference=fx["input21"],
                                    num_frames=int(fx["frames11"]), **style)
    assert_close(cross.blendshapes, fx["bs_output11"], 1e-4, "bs_output11 (content of A12, emotion of A21)")
    assert_close(cross.emotion_logits, fx["label1"], 1e-4, "label1 (emotion of A21)")
    self_rec = oracle_animator.animate(fx["input12"], num_frames=int(fx["frames12"]), **style)
    assert_close(self_rec.blendshapes, fx["bs_output12"], 1e-4, "bs_output12")


def test_own_audio_as_reference_is_plain_animate(animator, speech):
    plain = animator.animate(speech, level=0, person=4)
    same = animator.animate(speech, level=0, person=4, emotion_reference=speech)
    np.testing.assert_array_equal(same.blendshapes, plain.blendshapes)
    np.testing.assert_array_equal(same.emotion_logits, plain.emotion_logits)
    other = animator.animate(speech, level=0, person=4, emotion_reference=speech[::-1].copy())
    assert other.num_frames == plain.num_frames
    assert np.abs(other.blendshapes - plain.blendshapes).max() > 1e-3


def test_integer_controls_are_bit_identical_to_one_hot(animator, speech):
    anim = animator.animate(speech, level=1, person=3)
    wave = torch.from_numpy(speech)[None]
    with torch.inference_mode():  # the release's path: indices -> F.one_hot -> linear maps
        out = animator.model(wave, torch.tensor([wave.shape[1]]), torch.tensor([1]), torch.tensor([3]))
    np.testing.assert_array_equal(anim.blendshapes, out.blendshapes[0].numpy())
    for level, person in ((1.0, {3: 1.0}), (np.int64(1), np.eye(24)[3]), (1, tuple(np.eye(24)[3]))):
        np.testing.assert_array_equal(animator.animate(speech, level=level, person=person).blendshapes,
                                      anim.blendshapes)


def test_mixes_are_linear_in_the_style_embedding(animator):
    cfg, model = animator.config, animator.model
    content = torch.randn(1, 12, cfg.content.hidden_size)
    emotion = torch.randn(1, 12, cfg.emotion.hidden_size)

    def x_of(level, person):
        lw, pw = (torch.from_numpy(w).float()[None] for w in check_style(cfg, level, person))
        return model.decoder_inputs(content, emotion, lw, pw)[0]

    with torch.inference_mode():
        mix = x_of(0.3, {3: 0.7, 12: 0.3})
        want = 0.7 * 0.7 * x_of(0, 3) + 0.7 * 0.3 * x_of(0, 12) + 0.3 * 0.7 * x_of(1, 3) + 0.3 * 0.3 * x_of(1, 12)
    assert_close(mix, want, 1e-5, "mixed decoder input")


@pytest.mark.parametrize("kwargs,match", [
    ({"level": 1.5}, "float level"), ({"level": -0.1}, "float level"), ({"level": float("nan")}, "float level"),
    ({"level": (0.5, 0.6)}, "sum to 1"), ({"person": {3: 0.5}}, "sum to 1"), ({"person": {30: 1.0}}, "0..23"),
    ({"person": {3: 1.5, 4: -0.5}}, "non-negative"), ({"person": np.ones(23) / 23}, "24 entries"),
    ({"person": 24}, "0..23"),
])
def test_bad_controls_are_clear_errors(animator, speech, kwargs, match):
    with pytest.raises(ValueError, match=match):
        animator.animate(speech, **kwargs)


@pytest.mark.parametrize("kwargs", [{"person": "three"}, {"person": "3"}, {"person": True}, {"level": False},
                                    {"level": "1"}])
def test_wrong_types_say_what_is_accepted(animator, speech, kwargs):
    with pytest.raises(TypeError, match=r"must be an index 0\.\.\d+, a (float|mix).* got (str|bool)"):
        animator.animate(speech, **kwargs)


def test_schedule_weights_and_crossfade():
    cfg = EmoTalkConfig.from_name("tiny")
    lw, pw = Schedule(((0, 1, 0), (1.0, 0, 5)), crossfade_s=0.5).weights(cfg, 60)
    assert lw.shape == (60, 2) and pw.shape == (60, 24)
    np.testing.assert_allclose(lw[:30], [[0, 1]] * 30)
    np.testing.assert_allclose(lw[30:46, 0], np.clip(np.arange(16) / 15, 0, 1))  # 0 -> 1 over 0.5 s
    np.testing.assert_allclose(pw[45:, 5], 1.0)
    np.testing.assert_allclose(pw.sum(1), 1.0)
    hard_l, _ = Schedule(((0, 1, 0), (1.0, 0, 5))).weights(cfg, 60)
    np.testing.assert_array_equal(hard_l[29:31], [[0, 1], [1, 0]])
    for bad in (((1.0, 1, 0),), ((0, 1, 0), (0, 0, 1)), ((0, 1, 0), (2.0, 1, 0), (1.0, 0, 0))):
        with pytest.raises(ValueError):
            Schedule(bad)
    with pytest.raises(ValueError, match="level"):
        Schedule(((0, 7, 0),)).weights(cfg, 10)


def test_schedule_in_animate(animator, speech):
    plain = animator.animate(speech, level=1, person=0).blendshapes
    other = animator.animate(speech, level=0, person=5).blendshapes
    sched = animator.animate(speech, schedule=[(0.0, 1, 0), (1.0, 0, 5)]).blendshapes
    # the decoder is causal: frames before the change are the plain ones
    assert_close(sched[:30], plain[:30], 1e-5, "before the change")
    assert np.abs(sched[30:] - plain[30:]).max() > 1e-3
    assert np.abs(sched[30:] - other[30:]).mean() < np.abs(plain[30:] - other[30:]).mean()
    # a batch mixing a scheduled clip with a plain one matches the single calls
    batch = animator.animate_batch([speech, speech[:20000]], schedule=[Schedule(((0, 1, 0), (1.0, 0, 5))), None],
                                   level=1, person=0)
    assert_close(batch[0].blendshapes, sched, 1e-5, "scheduled clip in a batch")
    assert_close(batch[1].blendshapes, animator.animate(speech[:20000]).blendshapes, 1e-5, "plain clip in a batch")


def test_stream_style_changes(animator, speech):
    direct = animator.stream(level=0, person=5)
    changed = animator.stream(level=1, person=0)
    changed.set_style(level=0, person=5)
    np.testing.assert_array_equal(np.concatenate([changed.push(speech), changed.flush()]),
                                  np.concatenate([direct.push(speech), direct.flush()]))
    fading = animator.stream(level=1, person=0)
    first = fading.push(speech[:16000])
    fading.set_style(person={5: 1.0}, crossfade_ms=300)
    start = len(first)
    state = fading.engine._get(fading._id)
    assert state.style_at(start)[1][0] == 1.0 and state.style_at(start + 9)[1][5] == 1.0
    assert state.style_at(start + 3)[1][5] == pytest.approx(1 / 3)
    rest = np.concatenate([fading.push(speech[16000:]), fading.flush()])
    assert rest.shape[0] + start == direct.frames_emitted
    with pytest.raises(ValueError):
        fading.set_style(level=3)


def test_emotion_readout(animator, speech):
    anim = animator.animate(speech)
    timeline = anim.emotion_timeline
    assert len(timeline) == -(-anim.num_frames // 30)
    assert [t for t, _ in timeline] == [float(i) for i in range(len(timeline))]
    for _, probs in timeline:
        assert set(probs) == set(anim.emotion) and abs(sum(probs.values()) - 1) < 1e-6
    wave = torch.from_numpy(speech)[None]
    with torch.inference_mode():
        out = animator.model(wave, torch.tensor([wave.shape[1]]), torch.tensor([1]), torch.tensor([0]))
        first = animator.model.emotion_encoder.classify(out.emotion_hidden[0, :30].mean(0, keepdim=True))
    assert_close(anim.emotion_window_logits[0], first[0], 1e-5, "first window")


def test_labels_come_from_the_checkpoint(tmp_path, speech):
    import dataclasses

    cfg = dataclasses.replace(EmoTalkConfig.from_name("tiny"), emotion_labels=tuple("abcdefg"))
    Animator.from_config(cfg, device="cpu").save_pretrained(tmp_path / "ckpt")
    anim = Animator.from_pretrained(tmp_path / "ckpt", device="cpu").animate(speech)
    assert list(anim.emotion) == list("abcdefg")


def test_cli_flags(tmp_path, speech):
    import soundfile

    from emotalk_fast.model.checkpoint import random_release_state_dict

    torch.save(random_release_state_dict(EmoTalkConfig.from_name("tiny"), seed=6), tmp_path / "EmoTalk.pth")
    soundfile.write(tmp_path / "a.wav", speech, 16000)
    soundfile.write(tmp_path / "b.wav", speech[::-1].copy(), 16000)
    ckpt = Animator.from_pretrained(tmp_path / "EmoTalk.pth", device="cpu")

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "emotalk_fast.cli", "animate", str(tmp_path / "a.wav"),
                            "--checkpoint", str(tmp_path / "EmoTalk.pth"), *args], capture_output=True, text=True,
                           timeout=300)
        return r

    r = cli("-o", str(tmp_path / "x.npy"), "--level", "0.5", "--person", "3:0.7,12:0.3",
            "--emotion-reference", str(tmp_path / "b.wav"), "--print-emotion")
    assert r.returncode == 0, r.stderr
    want = ckpt.animate(tmp_path / "a.wav", level=0.5, person={3: 0.7, 12: 0.3},
                        emotion_reference=tmp_path / "b.wav")
    assert_close(np.load(tmp_path / "x.npy"), want.blendshapes, 1e-6, "cli transfer + mix")
    assert "clip" in r.stdout and "neutral" in r.stdout and "   1.0s" in r.stdout
    r = cli("-o", str(tmp_path / "y.npy"), "--schedule", "0:1:0,1.5:0:5", "--crossfade", "0.2")
    assert r.returncode == 0, r.stderr
    want = ckpt.animate(tmp_path / "a.wav", schedule=Schedule(((0, 1, 0), (1.5, 0, 5)), crossfade_s=0.2))
    assert_close(np.load(tmp_path / "y.npy"), want.blendshapes, 1e-6, "cli schedule")
    r = cli("-o", str(tmp_path / "z.npy"), "--schedule", "0-1-0")
    assert r.returncode == 1 and "--schedule takes" in r.stderr
    r = cli("-o", str(tmp_path / "z.npy"), "--person", "3:0.5")
    assert r.returncode == 1 and "sum to 1" in r.stderr
