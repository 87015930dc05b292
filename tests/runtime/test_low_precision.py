"""bfloat16 end to end on CPU against the oracle, held to what the dtype can do: the fast
model's error may be at most twice that of the reference model under torch's own bf16
autocast (which keeps LayerNorm and softmax in float32), plus 1e-3."""
import pytest
import torch

from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.model.checkpoint import random_release_state_dict, release_to_fast
from emotalk_fast.training.reference import EmoTalkReference, load_release_weights
from helpers import assert_close_to_dtype, load_oracle


@pytest.fixture(scope="module")
def oracle_models():
    cfg = EmoTalkConfig.from_name("mini")
    sd = random_release_state_dict(cfg, 0)
    ref = EmoTalkReference(cfg).eval()
    load_release_weights(ref, sd)
    fast = Animator.from_state_dict(cfg, release_to_fast(sd, cfg), device="cpu", dtype="bfloat16")
    return ref, fast


@pytest.mark.parametrize("clip", ["speech16k", "short16k"])
def test_bfloat16_animator_matches_oracle_within_dtype_error(oracle_models, clip):
    ref, fast = oracle_models
    fx = load_oracle(clip)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = ref.predict(torch.from_numpy(fx["audio"])[None], 1, 0)
    anim = fast.animate(fx["audio"], level=1, person=0)
    assert fast.model.content_map.weight.dtype == torch.bfloat16
    assert_close_to_dtype(anim.blendshapes, autocast["blendshapes"][0], fx["blendshapes_l1_p0"],
                          f"{clip} blendshapes", eps=1e-3)
    assert_close_to_dtype(anim.emotion_logits, autocast["emotion_logits"][0], fx["emotion_logits"],
                          f"{clip} logits", eps=1e-3)


def test_normalisation_statistics_stay_float32(oracle_models):
    """The encoders receive the float32 normalisation cast to bf16. Normalising after a cast
    to bf16 (8-bit mantissa) would be off by ~0.06 on this clip with a 0.5 DC offset."""
    from emotalk_fast.model.emotalk import normalize_waveform

    _, fast = oracle_models
    wave = torch.from_numpy(load_oracle("speech16k")["audio"])[None] + 0.5
    n = torch.tensor([wave.shape[1]])
    seen = []
    hook = fast.model.content_encoder.front_end.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.inference_mode():
            fast.model(wave, n, torch.tensor([1]), torch.tensor([0]))
    finally:
        hook.remove()
    want = normalize_waveform(wave, n)
    assert seen[0].dtype == torch.bfloat16
    assert torch.equal(seen[0], want.bfloat16())
    assert (normalize_waveform(wave.bfloat16(), n).float() - want).abs().max() > 0.01  # the lever matters
