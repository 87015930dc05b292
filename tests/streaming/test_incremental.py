"""Incremental encoding (streaming/incremental.py): each hop encodes only its new rows over the
kept keys and values. Its frames do not depend on how the audio is pushed, equal the windowed
stream's where nothing is kept (no context), keep their rings within one allocation, and batch in
the engine like any stream (tests/streaming/test_engine.py)."""
import numpy as np
import pytest
import torch

from emotalk_fast import Animator
from emotalk_fast.model.emotalk import num_frames
from emotalk_fast.streaming.settings import StreamSettings
from helpers import espeak_speech, stream_all

INCREMENTAL = dict(hop_ms=400, lookahead_ms=200, context_ms=1000, encoding="incremental")


@pytest.fixture(scope="module")
def animator():
    return Animator.from_config("tiny", seed=3, device="cpu", warn_random=False)


@pytest.fixture(scope="module")
def speech():
    return espeak_speech("Each frame is encoded once, and only once, as the audio comes in.", speed=170)


def test_push_sizes_do_not_matter(animator, speech):
    results = [stream_all(animator.stream(level=1, person=2, **INCREMENTAL), speech, sizes, seed)
               for sizes, seed in (([0, 1, 7, 160, 16000], 0), ([0, 1, 7, 160, 16000], 1), ([len(speech)], 0))]
    assert results[0].shape == (num_frames(len(speech)), 52) and np.isfinite(results[0]).all()
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("n", [720, 1601, 23999])
def test_as_many_frames_as_offline(animator, speech, n):
    stream = animator.stream(**INCREMENTAL)
    assert stream_all(stream, speech[:n], [333], 0).shape == (num_frames(n), 52)


@pytest.mark.parametrize("hop_ms, ramp", [(100, False), (400, True)])
def test_with_nothing_kept_it_is_the_windowed_stream(animator, speech, hop_ms, ramp):
    """No context: both paths encode exactly the new rows' window, normalised the same way."""
    common = dict(hop_ms=hop_ms, lookahead_ms=200, context_ms=0, ramp=ramp)
    windowed = stream_all(animator.stream(**common, emotion_hop_ms=hop_ms, encoding="windowed"), speech, [1600], 0)
    incremental = stream_all(animator.stream(**common, encoding="incremental"), speech, [1600], 0)
    np.testing.assert_allclose(incremental, windowed, atol=1e-5, rtol=0)


def test_the_rings_are_allocated_once_and_sized_by_the_contexts(animator, speech):
    stream = animator.stream(**INCREMENTAL, emotion_context_ms=1500)
    rings = stream.engine.executor.encoder.rings
    cfg = animator.config
    assert rings["content"].k.shape == (1, cfg.content.num_layers, 30, cfg.content.hidden_size)  # 1 s at 30 fps
    assert rings["emotion"].k.shape == (1, cfg.emotion.num_layers, 45, cfg.emotion.hidden_size)
    storage = {name: r.k.data_ptr() for name, r in rings.items()}
    frames = stream_all(stream, np.tile(speech, 3), [4000], 0)  # several times the context
    assert {name: r.k.data_ptr() for name, r in rings.items()} == storage
    assert rings["content"].k.abs().sum() > 0
    state = stream.engine._get(stream._id)
    assert state.encoded_rows == len(frames)  # every frame encoded once, kept round-robin


def test_it_lands_about_as_close_to_offline_as_the_windowed_stream(animator, speech):
    """Random weights exaggerate every deviation; still, keeping states costs little fidelity
    here (the trained-model figures are in docs/streaming.md)."""
    offline = animator.animate(speech, long_audio_s=None).blendshapes
    settings = dict(hop_ms=100, lookahead_ms=200, context_ms=1000, whole_utterance_ms=0)
    windowed = stream_all(animator.stream(**settings, encoding="windowed"), speech, [1600], 0)
    incremental = stream_all(animator.stream(**settings, encoding="incremental"), speech, [1600], 0)
    deviation = {name: float(np.abs(f - offline).mean()) for name, f in (("windowed", windowed),
                                                                          ("incremental", incremental))}
    assert deviation["incremental"] <= 1.25 * deviation["windowed"], deviation


def test_settings_that_do_not_go_with_it(animator):
    with pytest.raises(ValueError, match="leave emotion_hop_ms unset"):
        StreamSettings(encoding="incremental", emotion_hop_ms=300)
    with pytest.raises(ValueError, match="encoding must be one of windowed, incremental"):
        StreamSettings(encoding="chunked")
    assert not StreamSettings(encoding="incremental", emotion_context_ms=4000).separate_emotion


def test_the_budget_times_the_incremental_hop(animator):
    from emotalk_fast.streaming import budget

    b = budget.measure(animator.model, "cpu", torch.float32, StreamSettings(**INCREMENTAL), streams=2)
    assert set(b.hop_s) == {1, 2} and all(0 < t < 10 for t in b.hop_s.values()) and b.peak_s == b.hop_s
