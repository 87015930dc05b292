"""Streaming: exact KV-cached decoder, push-partition invariance, frame accounting, the
stream/long-audio windows agreeing, bounded memory, and bad input."""
import numpy as np
import pytest
import torch

from emotalk_fast import Animator
from emotalk_fast.model.style import style_weights
from emotalk_fast.model.decoder import RingKVCache
from emotalk_fast.model.emotalk import num_frames
from emotalk_fast.streaming.encoders import encode_windowed
from emotalk_fast.streaming.settings import StreamSettings
from helpers import CONFIGS, assert_close, decode_in_steps, espeak_speech, stream_all


@pytest.fixture(scope="module")
def animator():
    return Animator.from_config("tiny", seed=3, device="cpu")


@pytest.fixture(scope="module")
def speech():
    return espeak_speech("Streaming speech, pushed in pieces of every size.", speed=190)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kv_cached_decoder_equals_offline(name):
    anim = Animator.from_config(CONFIGS[name], seed=5, device="cpu")
    model, cfg = anim.model, anim.config
    T = 97
    g = torch.Generator().manual_seed(0)
    content = torch.randn(2, T, cfg.content.hidden_size, generator=g)
    emotion = torch.randn(2, T, cfg.emotion.hidden_size, generator=g)
    weights = style_weights(cfg, [0, 1], [3, 20], torch.float32, "cpu")
    rng = np.random.default_rng(1)
    with torch.inference_mode():
        offline, _ = model.decode(content, emotion, *weights)
        for _ in range(3):  # any chunking
            sizes, i = [], 0
            while i < T:
                sizes.append(min(int(rng.integers(1, 17)), T - i))
                i += sizes[-1]
            x, memory = model.decoder_inputs(content, emotion, *weights)
            out = decode_in_steps(model.decoder, x, memory, model.decoder.new_cache(2, T), sizes)
            assert_close(model.blendshape_head(out), offline, 1e-5, "streamed decoder")


def test_kv_cache_window_bounds_memory():
    """A ring of 50 frames: after 120, it holds positions 70..119 at index p % 50, was never
    reallocated, and reads them back with their absolute positions."""
    cache = RingKVCache(slots=2, num_heads=2, head_dim=4, capacity=50)
    storage = cache.k.data_ptr()
    for i in range(40):
        k = torch.full((1, 2, 3, 4), float(i))
        cache.write(torch.tensor([1]), torch.tensor([3 * i]), k, k)
    assert cache.k.shape == (2, 2, 50, 4) and cache.k.data_ptr() == storage
    keys, _, positions = cache.read([1], torch.tensor([120]), cache.capacity)
    order = positions[0].argsort()
    assert positions[0, order].tolist() == list(range(70, 120))
    assert keys[0, 0, order, 0].tolist() == [float(j // 3) for j in range(70, 120)]
    assert cache.k[0].abs().sum() == 0  # the other slot untouched


@pytest.mark.parametrize("encoding", ["incremental", "windowed"])
def test_push_partition_does_not_matter(animator, speech, encoding):
    results = [
        stream_all(animator.stream(level=1, person=2, encoding=encoding), speech, sizes, seed)
        for sizes, seed in (([0, 1, 7, 160, 16000], 0), ([0, 1, 7, 160, 16000], 1), ([len(speech)], 0), ([1600], 0))
    ]
    assert results[0].shape == (num_frames(len(speech)), 52)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("ramp", [False, True], ids=["hops", "ramp"])
@pytest.mark.parametrize("n", [720, 1601, 4800, 16000, 23999])
def test_total_frames_match_offline(animator, speech, n, ramp):
    stream = animator.stream(hop_ms=800 if ramp else 200, lookahead_ms=100, context_ms=300, ramp=ramp)
    frames = stream_all(stream, speech[:n], [333], 0)
    assert frames.shape == (num_frames(n), 52) and np.isfinite(frames).all()
    assert stream.frames_emitted == num_frames(n)


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "static-shapes"])
@pytest.mark.parametrize("settings", [
    {"hop_ms": 300, "lookahead_ms": 200, "context_ms": 1000, "emotion_context_ms": 1000, "emotion_hop_ms": 300},
    {"hop_ms": 300, "lookahead_ms": 200, "context_ms": 1000, "emotion_context_ms": 1500},
    {"hop_ms": 100, "lookahead_ms": 200, "context_ms": 1000, "emotion_context_ms": 1500, "emotion_hop_ms": 300},
    {"hop_ms": 1200, "lookahead_ms": 200, "context_ms": 1000, "emotion_context_ms": 1000, "ramp": False},
    {"hop_ms": 800, "lookahead_ms": 200, "context_ms": 1000, "emotion_context_ms": 1500, "ramp": False},
], ids=["one-window", "emotion-window", "emotion-every-3-hops", "no-ramp", "no-ramp-emotion-window"])
def test_stream_equals_windowed_offline(animator, speech, cuda_graphs, settings):
    """The stream and the long-audio path share windows, so they agree frame for frame (also
    through the engine's static-shape path, eager on the CPU), whether the emotion branch reads
    the content's windows or its own, every hop or every third (no whole-utterance rule at the
    end: the long-audio path has none)."""
    stream = animator.stream(level=0, person=7, cuda_graphs=cuda_graphs, whole_utterance_ms=0, encoding="windowed",
                             **settings)
    assert stream.engine.grid.separate_emotion == (settings["emotion_context_ms"] != settings["context_ms"])
    streamed = stream_all(stream, speech, [4000], 0)
    assert bool(stream.engine.executor.static_hops) == cuda_graphs
    with torch.inference_mode():
        content, emotion = encode_windowed(animator.model, torch.from_numpy(speech), stream.settings)
        offline, _ = animator.model.decode(content, emotion, *style_weights(animator.config, 0, 7, torch.float32, "cpu"))
    assert_close(streamed, offline[0], 1e-5, "stream vs windowed offline")


def test_a_ramp_gives_the_first_frames_after_100_ms_and_doubles_to_the_hop(animator, speech):
    """1200 ms hops with a ramp: hops of 100, 200, 400 and 800 ms, then 1200; the first frames
    come once 100 ms + the lookahead (+ the CNN's last 5 ms) have arrived; the steady latency is
    the hop's."""
    stream = animator.stream(hop_ms=1200, lookahead_ms=200, context_ms=1000, ramp=True)
    grid = stream.engine.grid
    assert [grid.start(k) for k in range(7)] == [0, 3, 9, 21, 45, 81, 117]
    assert grid.hops(46) == 5 and grid.hops(45) == 4 and grid.hops(3) == 1
    assert stream.push(speech[: 16 * 300]).shape == (0, 52)  # 300 ms: the CNN's last frame needs 5 ms more
    assert stream.push(speech[16 * 300 : 16 * 305]).shape == (3, 52)
    assert stream.push(speech[16 * 305 : 16 * 505]).shape == (6, 52)  # 300 + 200 + 5 ms
    assert stream.latency_ms == animator.stream(hop_ms=1200, lookahead_ms=200, context_ms=1000).latency_ms


def test_long_audio_threshold(animator, speech):
    exact = animator.animate(speech, long_audio_s=None).blendshapes
    np.testing.assert_array_equal(animator.animate(speech).blendshapes, exact)  # below the default threshold
    windowed = animator.animate(speech, long_audio_s=1.0)
    assert windowed.num_frames == num_frames(len(speech))
    from emotalk_fast.animator import LONG_WINDOW

    with torch.inference_mode():
        content, emotion = encode_windowed(animator.model, torch.from_numpy(speech), LONG_WINDOW)
        want, _ = animator.model.decode(content, emotion, *style_weights(animator.config, 1, 0, torch.float32, "cpu"))
    assert_close(windowed.blendshapes, want[0], 1e-5, "long-audio path")


def test_reset_with_new_style(animator, speech):
    stream = animator.stream(level=1, person=0)
    first = stream_all(stream, speech, [3200], 0)
    stream.reset(level=0, person=5)
    second = stream_all(stream, speech, [3200], 0)
    fresh = stream_all(animator.stream(level=0, person=5), speech, [3200], 0)
    np.testing.assert_array_equal(second, fresh)
    assert np.abs(first - second).max() > 1e-3
    stream.reset()
    np.testing.assert_array_equal(stream_all(stream, speech, [3200], 0), fresh)  # keeps level 0, person 5


def test_latency_and_memory_stay_bounded(animator):
    stream = animator.stream(hop_ms=100, lookahead_ms=200, context_ms=500, max_cache_s=2.0)
    assert stream.latency_ms == pytest.approx(100 + 200 + 5)
    rng = np.random.default_rng(0)
    for _ in range(40):  # 8 s of audio in 200 ms chunks
        stream.push((0.1 * rng.standard_normal(3200)).astype(np.float32))
    state = stream.engine._get(stream._id)
    context_ms = max(500, stream.settings.emotion_context)  # the longer of the two branches' windows
    assert len(state.buffer) <= (context_ms + 100 + 200) * 16 + 400 + 320 * 2
    assert stream.engine.executor.cache.k.shape[2] == 60  # 2 s at 30 fps, allocated once
    assert stream.emotion_logits.shape == (7,)


def test_bad_input_leaves_the_stream_usable(animator, speech):
    clean = stream_all(animator.stream(), speech, [4000], 0)
    stream = animator.stream()
    stream.push(speech[:4000])
    bad = speech[4000:8000].copy()
    bad[10] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        stream.push(bad)
    with pytest.raises(TypeError, match="floating point"):
        stream.push((speech[4000:8000] * 32767).astype(np.int16))
    with pytest.raises(ValueError, match="mono"):
        stream.push(np.zeros((2, 100), np.float32))
    with pytest.raises(TypeError):
        stream.push("loud noises")
    out = [stream.push(speech[i : i + 4000]) for i in range(4000, len(speech), 4000)]
    out.append(stream.flush())
    first = animator.stream().push(speech[:4000])
    np.testing.assert_array_equal(np.concatenate([first, *out]), clean)
    with pytest.raises(RuntimeError, match="reset"):
        stream.push(speech[:100])
    with pytest.raises(RuntimeError, match="reset"):
        stream.flush()
    stream.reset()
    assert stream.push(np.zeros(0, np.float32)).shape == (0, 52)


def test_empty_and_too_short_utterances(animator):
    stream = animator.stream()
    assert stream.flush().shape == (0, 52)
    stream.reset()
    stream.push(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="too short"):
        stream.flush()
    # 25-45 ms: too short for offline animation's emotion branch, not for a stream's window (no
    # whole-utterance label then); from 45 ms on the label is offline's
    noise = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 0.1
    for n in (400, 719, 720, 1000):
        stream = animator.stream()
        stream.push(noise[:n])
        assert stream.flush().shape == (num_frames(n), 52) and stream.emotion_logits.shape == (7,)
        if n >= animator.min_samples:
            np.testing.assert_allclose(stream.emotion_logits, animator.animate(noise[:n]).emotion_logits, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"hop_ms": 50}, {"hop_ms": 0}, {"lookahead_ms": 150}, {"context_ms": -100},
                                    {"max_cache_s": 0}, {"level": 3}, {"emotion_context_ms": 150}, {"whole_utterance_ms": -1},
                                    {"emotion_hop_ms": 400},  # more than hop + lookahead (300 ms)
                                    {"emotion_hop_ms": 200, "hop_ms": 300}, {"emotion_hop_ms": 0}])
def test_bad_settings(animator, kwargs):
    with pytest.raises(ValueError):
        animator.stream(**kwargs)


@pytest.mark.parametrize("rate", [48000, 44100, 8000])
def test_streaming_resampler_equals_offline_resampling(rate):
    from scipy.signal import resample_poly

    from emotalk_fast.io.audio import StreamingResampler

    rng = np.random.default_rng(rate)
    x = rng.standard_normal(9001).astype(np.float32)
    g = np.gcd(16000, rate)
    want = resample_poly(x.astype(np.float64), 16000 // g, rate // g).astype(np.float32)
    r = StreamingResampler(rate, 16000)
    out, i = [], 0
    while i < len(x):
        n = int(rng.choice([0, 1, 7, 160, 4410]))
        out.append(r.push(x[i : i + n]))
        i += n
    out.append(r.flush())
    np.testing.assert_array_equal(np.concatenate(out), want)


@pytest.mark.parametrize("rate", [4001, 31999, 383999])
def test_odd_rates_resample_in_bounded_time_and_memory(rate):
    """Rates with no common factor with 16 kHz: the ratio is approximated (within 3.2e-5) so the
    filter stays small, a 1 MiB chunk (512k samples) costs tens of MB at most, and streaming
    still equals offline resampling sample for sample."""
    import time
    import tracemalloc

    from emotalk_fast.io.audio import StreamingResampler, resample, resample_ratio, resampled_length

    up, down = resample_ratio(rate, 16000)
    assert max(up, down) <= 16000 and abs(up / down * rate / 16000 - 1) <= 3.2e-5
    x = np.random.default_rng(rate).standard_normal(1 << 19).astype(np.float32) * 0.1
    t0 = time.perf_counter()
    r = StreamingResampler(rate, 16000)
    tracemalloc.start()
    y = np.concatenate([r.push(x), r.flush()])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 20 and peak < 150e6, (time.perf_counter() - t0, peak)
    np.testing.assert_array_equal(y, resample(x, rate, 16000))
    assert len(y) == resampled_length(len(x), rate, 16000)


def test_resample_ratio_is_exact_for_common_rates():
    from emotalk_fast.io.audio import resample_ratio

    for rate in (8000, 11025, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000, 4001, 15999):
        up, down = resample_ratio(rate, 16000)
        assert up * rate == down * 16000, rate
    assert resample_ratio(383999, 16000) == (1, 24)


def test_stream_at_48khz(animator, speech):
    """A 48 kHz microphone: the same frames as a 16 kHz stream of what `animate` resamples to,
    for any push sizes, and offline's frame count."""
    from emotalk_fast.io.audio import resample

    mic = resample(speech, 16000, 48000)
    stream = animator.stream(sample_rate=48000)
    frames = stream_all(stream, mic, [0, 1, 7, 480, 4800], 0)
    np.testing.assert_array_equal(frames, stream_all(animator.stream(sample_rate=48000), mic, [len(mic)], 0))
    np.testing.assert_array_equal(frames, stream_all(animator.stream(), resample(mic, 48000, 16000), [1600], 0))
    assert len(frames) == animator.animate(mic, sample_rate=48000).num_frames
    assert 305 < stream.latency_ms < 310  # plus the resampling filter's delay
    stream.reset()
    np.testing.assert_array_equal(stream_all(stream, mic, [4800], 1), frames)
    with pytest.raises(ValueError, match="unsupported sample rate"):
        animator.stream(sample_rate=100)


def test_a_short_utterance_gets_offline_label(animator, speech):
    """An utterance up to whole_utterance_ms long is kept whole: once it ends, the stream's label
    is offline animation's (the emotion encoder over the whole utterance, the way it was
    trained), and so are the emotion states of its frames from then on; longer utterances keep
    the classifier on the running mean of the emitted frames' states."""
    short = speech[: 16000 * 2]
    offline = animator.animate(short)
    for whole_utterance_ms in (2000, 4000):
        stream = animator.stream(hop_ms=100, lookahead_ms=200, context_ms=1000, whole_utterance_ms=whole_utterance_ms,
                                 encoding="windowed")
        pushed = [stream.push(short[i : i + 1600]) for i in range(0, len(short), 1600)]
        before_end = len(np.concatenate(pushed))
        streamed = np.concatenate(pushed + [stream.flush()])
        np.testing.assert_allclose(stream.emotion_logits, offline.emotion_logits, atol=1e-5, rtol=0)
    # the hops that ran once the end arrived read offline's emotion states (the ones before, the stream's own)
    from emotalk_fast.model.emotalk import normalize_waveform

    with torch.inference_mode():
        wave = torch.from_numpy(short)
        content, emotion = encode_windowed(animator.model, wave, stream.settings)
        n = torch.tensor([len(short)])
        whole, _ = animator.model.encode_emotion(normalize_waveform(wave[None], n), n, [offline.num_frames])
        emotion[:, before_end:] = whole[:, before_end:]
        want, _ = animator.model.decode(content, emotion, *style_weights(animator.config, 1, 0, torch.float32, "cpu"))
    assert 9 <= offline.num_frames - before_end <= 12  # hop + lookahead, and the CNN's last frame
    assert_close(streamed, want[0], 1e-5, "the stream, offline's emotion states from the end on")

    long_stream = animator.stream(hop_ms=100, lookahead_ms=200, context_ms=1000, emotion_hop_ms=100,
                                  whole_utterance_ms=1900, encoding="windowed")  # 2 s is longer
    stream_all(long_stream, short, [1600], 0)
    with torch.inference_mode():
        _, emotion = encode_windowed(animator.model, torch.from_numpy(short),
                                     long_stream.settings.with_hop(100))
        running = animator.model.emotion_encoder.classify(emotion.mean(1))[0].numpy()
    np.testing.assert_allclose(long_stream.emotion_logits, running, atol=1e-5, rtol=0)
    assert np.abs(long_stream.emotion_logits - offline.emotion_logits).max() > 1e-4  # the two readouts differ here


def test_the_two_branches_at_once_give_the_same_frames(animator, speech, monkeypatch):
    """On a CPU with cores for both, the content and emotion encoders of a window run at once,
    each on its own thread: the same operations, so the same frames, bit for bit; the second
    branch's thread keeps the caller's inference mode."""
    from emotalk_fast.runtime import threads as policy
    from emotalk_fast.streaming.encoders import WindowedEncoder
    from emotalk_fast.streaming.grid import StreamGrid

    monkeypatch.setattr(policy, "cores", lambda: 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out, calls = {}, []
        real = policy.branches_run_at_once
        monkeypatch.setattr(policy, "branches_run_at_once", lambda device: calls.append(real(device)) or calls[-1])
        for at_once in (False, True):
            monkeypatch.setattr(policy, "CONCURRENT_BRANCHES", at_once)
            stream = animator.stream(hop_ms=400, context_ms=1000, lookahead_ms=200)
            out[at_once] = stream_all(stream, speech, [1600], 0)
        assert any(calls) and not all(calls)  # both ways ran
        np.testing.assert_array_equal(out[True], out[False])
        grid = StreamGrid.for_model(StreamSettings(hop_ms=400, lookahead_ms=200, context_ms=1000), animator.config)
        encoder = WindowedEncoder(animator.model, grid)
        w = grid.window(1)
        with torch.inference_mode():
            content, emotion = encoder.encode(torch.from_numpy(speech[w.s0 : w.s1]), w)
        assert emotion.is_inference() and content.is_inference()
        torch.set_num_threads(2)  # 2 threads x 2 branches > 2 cores: one after the other
        assert not real(torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
