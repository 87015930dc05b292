"""The released model's own outputs (oracle fixtures) against the reference and the fast model,
reached three ways: weights in memory, a torch.save'd EmoTalk.pth, and convert -> directory."""
import json

import numpy as np
import pytest
import torch

from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.model.checkpoint import random_release_state_dict
from emotalk_fast.cli import main as cli_main
from emotalk_fast.training.reference import EmoTalkReference, load_release_weights
from helpers import FIXTURES, assert_close, load_oracle

TOL = 1e-4  # the oracle README's bound for a faithful float32 implementation
CLIPS = ("speech16k", "short16k")
STYLES = ((1, 0), (0, 5), (1, 23))
ARRAYS = ("content_hidden", "emotion_hidden", "emotion_logits", "decoder_out", "blendshapes")


@pytest.fixture(scope="module")
def oracle_config():
    return EmoTalkConfig.from_name("mini")


@pytest.fixture(scope="module")
def oracle_state_dict(oracle_config):
    meta = json.loads((FIXTURES / "oracle_mini" / "oracle.json").read_text())
    sd = random_release_state_dict(oracle_config, meta["seed"])
    for key, (total, first) in meta["checks"].items():  # our rebuild of the weight rule
        assert abs(sd[key].double().sum().item() - total) <= 1e-6 * max(1.0, abs(total)), key
        assert sd[key].flatten()[:3].tolist() == first, key
    return sd


@pytest.fixture(scope="module")
def reference(oracle_config, oracle_state_dict):
    model = EmoTalkReference(oracle_config).eval()
    load_release_weights(model, oracle_state_dict)
    return model


@pytest.fixture(scope="module")
def pth_path(tmp_path_factory, oracle_state_dict):
    path = tmp_path_factory.mktemp("release") / "EmoTalk.pth"
    torch.save(oracle_state_dict, path)
    return path


@pytest.fixture(scope="module")
def animators(pth_path, tmp_path_factory):
    converted = tmp_path_factory.mktemp("converted") / "emotalk-mini"
    assert cli_main(["convert", str(pth_path), str(converted)]) == 0
    return {"pth": Animator.from_pretrained(pth_path, device="cpu"),
            "converted": Animator.from_pretrained(converted, device="cpu")}


def _oracle_array(fixture, name, level, person):
    return fixture[name] if name in fixture else fixture[f"{name}_l{level}_p{person}"]


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("level,person", STYLES)
def test_reference_model_matches_release(reference, clip, level, person):
    fx = load_oracle(clip)
    with torch.no_grad():
        out = reference.predict(torch.from_numpy(fx["audio"])[None], level, person)
    for name in ARRAYS:
        assert_close(out[name][0], _oracle_array(fx, name, level, person), TOL, f"{clip} {name}")


@pytest.mark.parametrize("route", ["pth", "converted"])
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("level,person", STYLES)
def test_animator_matches_release(animators, route, clip, level, person):
    animator = animators[route]
    fx = load_oracle(clip)
    wave = torch.from_numpy(fx["audio"])[None]
    with torch.inference_mode():
        out = animator.model(wave, torch.tensor([wave.shape[1]]), torch.tensor([level]), torch.tensor([person]))
    for name in ARRAYS:
        assert_close(getattr(out, name)[0], _oracle_array(fx, name, level, person), TOL, f"{route} {clip} {name}")
    anim = animator.animate(fx["audio"], sample_rate=16_000, level=level, person=person)
    assert_close(anim.blendshapes, fx[f"blendshapes_l{level}_p{person}"], TOL, f"{route} {clip} animate")
    assert_close(anim.emotion_logits, fx["emotion_logits"], TOL, f"{route} {clip} logits")


def test_training_forward_matches_release(reference):
    fx = load_oracle("train_forward")
    with torch.no_grad():
        out11, out12, label1 = reference(
            torch.from_numpy(fx["input12"])[None], torch.from_numpy(fx["input21"])[None],
            int(fx["frames11"]), int(fx["frames12"]), int(fx["level"]), int(fx["person"]))
    assert_close(out11[0], fx["bs_output11"], TOL, "bs_output11 (cross reconstruction)")
    assert_close(out12[0], fx["bs_output12"], TOL, "bs_output12 (self reconstruction)")
    assert_close(label1[0], fx["label1"], TOL, "label1")


def test_fixture_sensitivity(animators):
    """The tolerance catches real mistakes: a period of 60 instead of 30 is far outside it."""
    import dataclasses

    from emotalk_fast.model.emotalk import EmoTalk

    good = animators["pth"].model
    cfg = good.cfg
    wrong_cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, period=60))
    wrong = EmoTalk(wrong_cfg).eval()
    wrong.load_state_dict(good.state_dict())
    fx = load_oracle("speech16k")
    wave = torch.from_numpy(fx["audio"])[None]
    with torch.inference_mode():
        out = wrong(wave, torch.tensor([wave.shape[1]]), torch.tensor([1]), torch.tensor([0]))
    err = np.abs(out.blendshapes[0].numpy() - fx["blendshapes_l1_p0"]).max()
    assert err > 10 * TOL
