"""The real release-size architecture (640.6 M parameters, oracle-rule random weights):
a torch.save'd EmoTalk.pth loads and animates 20 s of real speech on CPU, and the fast model
agrees with the reference model at full size."""
import gc
import time

import numpy as np
import pytest
import torch

from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.model.checkpoint import random_release_state_dict
from emotalk_fast.model.emotalk import num_frames
from emotalk_fast.training.reference import EmoTalkReference, load_release_weights
from helpers import assert_close, espeak_speech

pytestmark = pytest.mark.slow

SENTENCES = ("The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. "
             "How much wood would a woodchuck chuck if a woodchuck could chuck wood? "
             "Peter Piper picked a peck of pickled peppers, and then he went home for dinner.")


@pytest.fixture(scope="module")
def release_pth(tmp_path_factory):
    """The release-size checkpoint on disk: the only copy of its weights the module keeps (each
    model that needs them loads it), so at most two release-size models are in memory at once."""
    path = tmp_path_factory.mktemp("release") / "EmoTalk.pth"
    torch.save(random_release_state_dict(EmoTalkConfig.from_name("emotalk"), seed=0), path)
    return path


def test_release_checkpoint_animates_20_seconds(release_pth):
    speech = espeak_speech(SENTENCES, speed=150)
    speech = np.resize(speech, 20 * 16000)  # exactly 20 s
    t0 = time.perf_counter()
    animator = Animator.from_pretrained(release_pth, device="cpu")
    load_s = time.perf_counter() - t0
    # release 640,570,427 less lm_head/masked_spec_embed (67,648), the cross-attention's unused
    # q/k/v in-projection (2,079,168; W_o.W_v is folded) and the two weight_g (256)
    assert sum(p.numel() for p in animator.model.parameters()) == 640_570_427 - 67_648 - 2_079_168 - 256
    anim = animator.animate(speech, level=1, person=0)
    assert anim.blendshapes.shape == (num_frames(len(speech)), 52) == (600, 52)
    assert np.isfinite(anim.blendshapes).all()
    print(f"release-size load {load_s:.2f} s")


def test_release_size_engine_static_shapes_equal_streams_alone(release_pth):
    """The real architecture through the batched engine's static-shape path (windows padded to
    one length, 3 streams padded to the bucket of 4, the whole ring read): each stream equals
    the stream alone."""
    from emotalk_fast.streaming.engine import StreamEngine
    from emotalk_fast.streaming.settings import StreamSettings

    settings = dict(hop_ms=100, lookahead_ms=200, context_ms=600, max_cache_s=2.0)
    animator = Animator.from_pretrained(release_pth, device="cpu")
    speech = [espeak_speech(text, speed=200) for text in ("Three faces.", "Speak at once.", "Here.")]
    speech = [s[: 16000 + 4000 * i] for i, s in enumerate(speech)]
    engine = StreamEngine(animator.model, "cpu", torch.float32, StreamSettings(**settings), max_streams=4,
                          cuda_graphs=True)
    ids = [engine.open(level=i % 2, person=5 * i) for i in range(3)]
    frames = {sid: [] for sid in ids}
    for sid, s in zip(ids, speech):
        engine.push(sid, s)
        engine.flush(sid)
    while step := engine.step():
        for sid, f in step.items():
            frames[sid].append(f)
    assert 4 in engine.executor.static_hops  # three streams ran padded to four rows
    for i, (sid, s) in enumerate(zip(ids, speech)):
        alone = animator.stream(level=i % 2, person=5 * i, **settings)
        want = np.concatenate([alone.push(s), alone.flush()])
        got = np.concatenate(frames[sid])
        assert got.shape == want.shape == (num_frames(len(s)), 52)
        assert_close(got, want, 1e-5, f"stream {i}")


PARITY_TEXT, BF16_TEXT = "Full size parity check.", "Half precision at full size."


@pytest.fixture(scope="module")
def reference_outputs(release_pth):
    """What the reference model predicts for the two tests below (float32, and the bf16 test's
    float32 and autocast runs). Only its outputs outlive this fixture, so the reference model
    and a fast model are never in memory together."""
    with torch.device("meta"):  # no weights of its own: it takes the checkpoint's, mapped from the file
        ref = EmoTalkReference(EmoTalkConfig.from_name("emotalk")).eval()
    load_release_weights(ref, torch.load(release_pth, mmap=True, weights_only=True), assign=True)
    parity = torch.from_numpy(espeak_speech(PARITY_TEXT, speed=170))[None]
    bf16 = torch.from_numpy(espeak_speech(BF16_TEXT, speed=170))[None]
    with torch.inference_mode():
        out = {"parity": ref.predict(parity, level=0, person=17), "bf16": ref.predict(bf16, level=1, person=0)}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["bf16_autocast"] = ref.predict(bf16, level=1, person=0)
    del ref
    gc.collect()  # the reference (Hugging Face modules) sits in reference cycles: free it now, not later
    return out


def test_release_size_fast_model_matches_reference(reference_outputs, release_pth):
    fast = Animator.from_pretrained(release_pth, device="cpu").model
    wave = torch.from_numpy(espeak_speech(PARITY_TEXT, speed=170))[None]
    with torch.inference_mode():
        r = reference_outputs["parity"]
        f = fast(wave, torch.tensor([wave.shape[1]]), torch.tensor([0]), torch.tensor([17]))
    # 24 layers of width 1024 accumulate more float32 rounding than the tiny configs
    for name in ("content_hidden", "emotion_hidden", "emotion_logits", "decoder_out", "blendshapes"):
        assert_close(getattr(f, name)[0], r[name][0], 1e-4, name)


def test_release_size_bfloat16_within_dtype_error(reference_outputs, release_pth):
    """bf16 weights and compute end to end at full size: the deviation from float32 is at most
    twice that of the reference under torch's bf16 autocast (LayerNorm, softmax in float32)."""
    from helpers import assert_close_to_dtype

    speech = espeak_speech(BF16_TEXT, speed=170)
    want, autocast = reference_outputs["bf16"], reference_outputs["bf16_autocast"]
    anim = Animator.from_pretrained(release_pth, device="cpu", dtype="bfloat16").animate(speech, level=1, person=0)
    err = assert_close_to_dtype(anim.blendshapes, autocast["blendshapes"][0], want["blendshapes"][0],
                                "bf16 blendshapes", eps=1e-3)
    print(f"release-size bf16 blendshape deviation from float32: max {err:.4f}")
