"""Config presets, serialisation and validation."""
import dataclasses

import pytest

from emotalk_fast.model.config import BLENDSHAPE_NAMES, DecoderConfig, EmoTalkConfig, EncoderConfig


def test_release_preset():
    cfg = EmoTalkConfig.from_name("emotalk")
    assert cfg.decoder.feature_dim == 832 and cfg.decoder.head_dim == 208
    assert cfg.decoder.alibi_slopes() == [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    assert cfg.content.receptive_field == 400 and cfg.content.num_cnn_frames(16000) == 49
    assert len(BLENDSHAPE_NAMES) == 52 == len(set(BLENDSHAPE_NAMES))
    assert BLENDSHAPE_NAMES[8:10] == ("eyeBlinkLeft", "eyeBlinkRight")


@pytest.mark.parametrize("name", ["emotalk", "mini", "tiny"])
def test_round_trip(name):
    cfg = EmoTalkConfig.from_name(name)
    assert EmoTalkConfig.from_dict(cfg.to_dict()) == cfg


def test_frozen_and_validated():
    cfg = EmoTalkConfig.from_name("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.decoder = None
    with pytest.raises(ValueError, match="unknown preset"):
        EmoTalkConfig.from_name("huge")
    with pytest.raises(ValueError, match="not divisible"):
        EncoderConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="not divisible"):
        DecoderConfig(content_dim=13)
    with pytest.raises(ValueError, match="label names"):
        EmoTalkConfig(emotion_labels=("a", "b"))
    with pytest.raises(ValueError, match="unknown decoder config fields"):
        EmoTalkConfig.from_dict({**cfg.to_dict(), "decoder": {"bogus": 1}})
    with pytest.raises(ValueError, match="power-of-two"):
        DecoderConfig(num_heads=13).alibi_slopes()
