"""The reference model's training forward against the release (oracle fixtures), and the
release checkpoint layout that the trainer writes."""
import numpy as np
import torch

from emotalk_fast.model import checkpoint as ckpt
from emotalk_fast.model.config import EmoTalkConfig
from emotalk_fast.training.reference import EmoTalkReference, load_release_weights
from emotalk_fast.training.train import TrainConfig, build_model, release_state_dict

from helpers import FIXTURES, assert_close


def _mini_reference() -> EmoTalkReference:
    cfg = EmoTalkConfig.from_name("mini")
    model = EmoTalkReference(cfg).eval()
    load_release_weights(model, ckpt.random_release_state_dict(cfg, seed=0))
    return model


def test_train_forward_matches_release():
    ref = np.load(FIXTURES / "oracle_mini" / "train_forward.npz")
    model = _mini_reference()
    with torch.no_grad():
        out11, out12, label1 = model(torch.from_numpy(ref["input12"])[None], torch.from_numpy(ref["input21"])[None],
                                     int(ref["frames11"]), int(ref["frames12"]), int(ref["level"]), int(ref["person"]))
    assert_close(out11[0], ref["bs_output11"], 1e-4, "bs_output11 (cross reconstruction)")
    assert_close(out12[0], ref["bs_output12"], 1e-4, "bs_output12 (self reconstruction)")
    assert_close(label1[0], ref["label1"], 1e-4, "label1 (emotion logits of input21)")


def test_batched_train_forward_equals_per_item():
    """Two pairs of equal shapes in one batch give each pair's own outputs (levels/persons differ)."""
    model = _mini_reference()
    g = torch.Generator().manual_seed(0)
    a12, a21 = torch.randn(2, 9000, generator=g), torch.randn(2, 7000, generator=g)
    with torch.no_grad():
        batched = model(a12, a21, 20, 17, torch.tensor([0, 1]), torch.tensor([3, 11]))
        for i, (lv, p) in enumerate([(0, 3), (1, 11)]):
            single = model(a12[i:i + 1], a21[i:i + 1], 20, 17, lv, p)
            for b, s, name in zip(batched, single, ("out11", "out12", "label1")):
                assert_close(b[i], s[0], 1e-5, f"item {i} {name}")


def test_release_state_dict_is_the_release_layout():
    """What the trainer saves is exactly a release EmoTalk.pth: keys, order, shapes, values."""
    cfg = EmoTalkConfig.from_name("mini")
    sd = ckpt.random_release_state_dict(cfg, seed=3)
    model = EmoTalkReference(cfg)
    load_release_weights(model, sd)
    out = release_state_dict(model)
    assert list(out) == [k for k, _ in ckpt.release_manifest(cfg)]
    for k, v in sd.items():
        assert torch.equal(out[k], v), k


def test_front_ends_frozen_and_unused_tensors_excluded():
    model = build_model(TrainConfig(data_dir=".", output_dir=".", preset="tiny"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all("feature_extractor" in n or "lm_head" in n or "masked_spec_embed" in n for n in frozen)
    assert sum("feature_extractor" in n for n in frozen) == sum("feature_extractor" in n for n, _ in model.named_parameters())
    assert any("transformer_decoder" in n for n in trainable) and any("classifier" in n for n in trainable)
