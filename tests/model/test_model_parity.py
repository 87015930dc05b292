"""The fast model against the reference model (release layout, Hugging Face pieces) on random
tiny configs, and the lean wav2vec2 encoder against transformers.Wav2Vec2Model."""

import pytest
import torch

from emotalk_fast.model.checkpoint import random_release_state_dict, release_to_fast, rename_weight_norm
from emotalk_fast.model.config import EncoderConfig
from emotalk_fast.model.encoder import Wav2Vec2Encoder
from emotalk_fast.model.emotalk import EmoTalk, num_frames
from emotalk_fast.training.reference import EmoTalkReference, hf_config, load_release_weights, normalize
from helpers import CONFIGS, assert_close

TOL = 1e-5

def _pair(cfg, seed=0):
    sd = random_release_state_dict(cfg, seed)
    ref = EmoTalkReference(cfg).eval()
    load_release_weights(ref, sd)
    fast = EmoTalk(cfg).eval()
    fast.load_state_dict(release_to_fast(sd, cfg))
    return ref, fast


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def models(request):
    return _pair(CONFIGS[request.param])


def _speechlike(n, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return 0.1 * torch.sin(2 * torch.pi * 140 * t) * (1 + torch.sin(2 * torch.pi * 3 * t)) + \
        0.02 * torch.randn(n, generator=g)


@pytest.mark.parametrize("num_samples", [720, 9067, 16000, 37123])  # 2 frames (the shortest), 17, 30, 70
def test_fast_model_matches_reference(models, num_samples):
    ref, fast = models
    wave = _speechlike(num_samples, num_samples)[None]
    with torch.no_grad():
        r = ref.predict(wave, level=0, person=3)
        f = fast(wave, torch.tensor([num_samples]), torch.tensor([0]), torch.tensor([3]))
    assert f.frames == [num_frames(num_samples)]
    for name in ("content_hidden", "emotion_hidden", "emotion_logits", "decoder_out", "blendshapes"):
        assert_close(getattr(f, name)[0], r[name][0], TOL, name)


def test_batched_equal_lengths_matches_reference(models):
    ref, fast = models
    wave = torch.stack([_speechlike(12000, s) for s in range(3)])
    with torch.no_grad():
        r = ref.predict(wave, level=1, person=7)
        f = fast(wave, torch.tensor([12000] * 3), torch.tensor([1] * 3), torch.tensor([7] * 3))
    assert_close(f.blendshapes, r["blendshapes"], TOL, "blendshapes")


def test_ragged_batch_matches_single_calls(models):
    _, fast = models
    lengths = [16000, 720, 9067, 23456]
    waves = [_speechlike(n, i) for i, n in enumerate(lengths)]
    padded = torch.zeros(len(waves), max(lengths))
    for i, w in enumerate(waves):
        padded[i, : len(w)] = w
    with torch.no_grad():
        batch = fast(padded, torch.tensor(lengths), torch.tensor([0, 1, 1, 0]), torch.tensor([0, 5, 23, 2]))
        for i, w in enumerate(waves):
            one = fast(w[None], torch.tensor([len(w)]), torch.tensor([[0, 1, 1, 0][i]]),
                       torch.tensor([[0, 5, 23, 2][i]]))
            t = batch.frames[i]
            assert_close(batch.blendshapes[i, :t], one.blendshapes[0], TOL, f"item {i} blendshapes")
            assert_close(batch.emotion_logits[i], one.emotion_logits[0], TOL, f"item {i} logits")


@pytest.mark.parametrize("T", [1, 17, 299])
def test_decoder_alone_matches_reference(models, T):
    """Decoder-level check on lengths audio cannot reach (1 frame), and across periods."""
    ref, fast = models
    cfg = fast.cfg
    g = torch.Generator().manual_seed(T)
    content = torch.randn(2, T, cfg.content.hidden_size, generator=g)
    emotion = torch.randn(2, T, cfg.emotion.hidden_size, generator=g)
    level = torch.nn.functional.one_hot(torch.tensor([0, 1]), 2).float()
    person = torch.nn.functional.one_hot(torch.tensor([4, 19]), 24).float()
    with torch.no_grad():
        rb, ro = ref.decode(content, emotion, level, person)
        fb, fo = fast.decode(content, emotion, level, person)
    assert_close(fo, ro, TOL, "decoder_out")
    assert_close(fb, rb, TOL, "blendshapes")


def test_decoder_query_blocks_do_not_change_results(monkeypatch):
    """Long inputs are attended block by block; the blocking must be invisible."""
    from emotalk_fast.model import ops as dec_mod

    _, fast = _pair(CONFIGS["tiny"], seed=3)
    x = torch.randn(1, 700, fast.cfg.decoder.feature_dim)
    mem = torch.randn(1, 700, fast.cfg.decoder.feature_dim)
    with torch.no_grad():
        whole = fast.decoder(x, mem)
        monkeypatch.setattr(dec_mod, "QUERY_BLOCK", 64)
        blocked = fast.decoder(x, mem)
    assert_close(blocked, whole, TOL, "blocked decoder")


# --- the lean wav2vec2 against transformers ---------------------------------------------------
ENCODERS = [
    EncoderConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96, conv_dim=(32,) * 7,
                  num_pos_conv_taps=16, num_pos_conv_groups=4),
    EncoderConfig(hidden_size=48, num_layers=3, num_heads=6, intermediate_size=50, conv_dim=(8, 16, 16, 24, 24, 12, 20),
                  num_pos_conv_taps=9, num_pos_conv_groups=2, conv_bias=False),
]


@pytest.mark.parametrize("enc_cfg", ENCODERS, ids=["even-taps", "odd-taps-no-conv-bias"])
def test_lean_wav2vec2_matches_transformers(enc_cfg):
    from transformers import Wav2Vec2Model

    from emotalk_fast.model.checkpoint import _encoder_to_fast

    torch.manual_seed(0)
    hf = Wav2Vec2Model(hf_config(enc_cfg)).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = rename_weight_norm(hf.state_dict())
    fast_sd = {}
    _encoder_to_fast(sd, "", "", enc_cfg, fast_sd)
    fast = Wav2Vec2Encoder(enc_cfg).eval()
    fast.load_state_dict(fast_sd)

    lengths = [8000, 5000]
    wave = normalize(torch.randn(2, 8000))
    wave[1, 5000:] = 0
    mask = torch.zeros(2, 8000, dtype=torch.long)
    mask[0, :8000], mask[1, :5000] = 1, 1
    with torch.no_grad():
        want = hf(wave, attention_mask=mask).last_hidden_state
        feats = fast.front_end(wave)
        frames = [enc_cfg.num_cnn_frames(n) for n in lengths]
        got = fast.transformer(feats, torch.tensor(frames))
        single = hf(wave[:1]).last_hidden_state
    assert got.shape == want.shape
    for i, t in enumerate(frames):
        assert_close(got[i, :t], want[i, :t], TOL, f"item {i}")
    assert_close(got[0], single[0], TOL, "unpadded item")


@pytest.mark.parametrize("num_samples", [32001, 32400, 64321, 100000, 160123])
def test_front_end_in_pieces_equals_one_pass(num_samples):
    """The CNN front end runs in pieces of FRONT_END_PIECE_FRAMES output frames (small
    temporaries): the same frames as one pass over the whole clip, up to GEMM rounding."""
    from emotalk_fast import Animator
    from emotalk_fast.model.encoder import FRONT_END_PIECE_FRAMES

    front_end = Animator.from_config("mini", device="cpu").model.content_encoder.front_end
    wave = torch.randn(2, num_samples, generator=torch.Generator().manual_seed(num_samples))
    with torch.inference_mode():
        pieces, whole = front_end(wave), front_end._layers(wave)
    assert pieces.shape == whole.shape == (2, front_end.cfg.num_cnn_frames(num_samples), 64)
    assert pieces.shape[1] > FRONT_END_PIECE_FRAMES or num_samples < 32400
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=0)
