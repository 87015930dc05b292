"""One CNN front end for both encoders, only when the checkpoint's front-end tensors are equal
(a model fine-tuned from one wav2vec2); the release's differ and stay separate."""
import torch

from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.model.checkpoint import random_release_state_dict
from emotalk_fast.model.emotalk import EmoTalk
from emotalk_fast.runtime.layout import column_major_linears
from helpers import assert_close

CFG = EmoTalkConfig.from_name("tiny")


def _release_sd(share: bool):
    sd = random_release_state_dict(CFG, 1)
    if share:
        src, dst = "audio_encoder_cont.feature_extractor.", "audio_encoder_emo.wav2vec2.feature_extractor."
        for k in [k for k in sd if k.startswith(src)]:
            sd[dst + k[len(src):]] = sd[k].clone()
    return sd


def _run(model, wave):
    with torch.inference_mode():
        return model(wave, torch.tensor([wave.shape[1]]), torch.tensor([1]), torch.tensor([3]))


def test_release_like_checkpoint_keeps_two_front_ends(tmp_path):
    torch.save(_release_sd(share=False), tmp_path / "EmoTalk.pth")
    assert not Animator.from_pretrained(tmp_path / "EmoTalk.pth", device="cpu").model.shares_front_end


def test_equal_front_ends_are_shared_and_give_the_same_output(tmp_path):
    from emotalk_fast.model.checkpoint import release_to_fast

    torch.save(_release_sd(share=True), tmp_path / "EmoTalk.pth")
    shared = Animator.from_pretrained(tmp_path / "EmoTalk.pth", device="cpu").model
    assert shared.shares_front_end
    separate = EmoTalk(CFG).eval()  # the same weights, front end run once per encoder
    separate.load_state_dict(release_to_fast(_release_sd(share=True), CFG))
    column_major_linears(separate)  # laid out as the Animator lays out its model: the same GEMMs
    assert not separate.shares_front_end
    calls = []
    shared.content_encoder.front_end.register_forward_hook(lambda *a: calls.append(1))
    wave = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    a, b = _run(shared, wave), _run(separate, wave)
    assert len(calls) == 1
    for name in ("content_hidden", "emotion_hidden", "emotion_logits", "blendshapes"):
        assert_close(getattr(a, name), getattr(b, name), 0.0, name)  # same ops on the same data

    # save_pretrained writes the shared tensors twice (safetensors refuses shared storage)
    animator = Animator(shared, device="cpu")
    animator.save_pretrained(tmp_path / "converted")
    again = Animator.from_pretrained(tmp_path / "converted", device="cpu").model
    assert again.shares_front_end
    assert_close(_run(again, wave).blendshapes, a.blendshapes, 0.0, "reloaded")


def test_one_differing_tensor_keeps_them_apart():
    from emotalk_fast.model.checkpoint import release_to_fast

    sd = _release_sd(share=True)
    sd["audio_encoder_emo.wav2vec2.feature_extractor.conv_layers.6.layer_norm.bias"][0] += 1e-6
    model = Animator.from_state_dict(CFG, release_to_fast(sd, CFG), device="cpu").model
    assert not model.shares_front_end
