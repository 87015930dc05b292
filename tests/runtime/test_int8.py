"""int8 encoder layers: each layer exactly its rounded operands' float product and close to its
float32 linear, the whole model close to float32 with the same labels in a view that leaves the
float model as it is, the int8 weights cached and rebuilt when stale, streaming on it still equal
to its long-audio path, and the settings it refuses."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from emotalk_fast import Animator
from emotalk_fast.runtime.int8 import Int8Linear, weight_levels
from helpers import espeak_speech


@pytest.mark.parametrize("rows", [1, 3, 64, 301])
@pytest.mark.parametrize("bias", [True, False])
def test_an_int8_linear_is_close_to_its_linear(rows, bias):
    torch.manual_seed(rows)
    linear = nn.Linear(96, 160, bias=bias)
    x = torch.randn(2, rows, 96) * 3
    want, got = linear(x).detach(), Int8Linear.from_linear(linear, weight_levels())(x).detach()
    assert got.shape == want.shape and got.dtype == torch.float32
    # rounding both operands to 8 bits: a few tenths of a percent of the output's scale per element
    assert float((got - want).abs().max()) < 0.02 * float(want.abs().max())
    assert float((got - want).abs().mean()) < 0.01 * float(want.abs().mean())


@pytest.mark.parametrize("rows", [1, 15, 301])
def test_an_int8_linear_is_its_rounded_operands_float_product(rows):
    """What it computes, exactly: activations rounded per row and weights per output channel,
    dequantised, multiplied in float64: equal within float32 rounding."""
    torch.manual_seed(rows)
    linear = nn.Linear(256, 96)
    layer = Int8Linear.from_linear(linear, weight_levels())
    x = torch.randn(rows, 256) * 2
    peak = x.abs().amax(1, keepdim=True)
    x_rounded = torch.round(x * (127 / peak)) * (peak / 127)
    w_rounded = layer.weight_t.t().double() * layer.weight_scale.double()[:, None]
    want = x_rounded.double() @ w_rounded.t() + linear.bias.detach().double()
    got = layer(x).detach().double()
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    assert layer.bias is linear.bias  # shared, not copied
    for source in (linear, nn.Linear(256, 96)):  # row-major, or laid out column-major (runtime/layout.py)
        if source is not linear:
            source.weight.data = source.weight.data.t().contiguous().t()
        # [in, out] column-major: the layout torch._int_mm's CPU kernel is fastest with
        assert Int8Linear.from_linear(source).weight_t.stride() == (1, 256)


def test_int8_weights_multiply_exactly_here_and_on_an_avx2_cpu():
    """A GEMM without VNNI (AVX2) sums u8 x s8 pairs in saturating 16 bits: with full-scale 8-bit
    weights on an EPYC capped at AVX2 that moved the trained tiny's curves 0.30 of their spread,
    21x the rounding's own (docs/performance.md). weight_levels() measures the GEMM and keeps
    the weights at 7 bits there."""
    levels = weight_levels()
    assert levels in (127, 63)
    g = torch.Generator().manual_seed(1)
    x = torch.full((32, 256), 127, dtype=torch.int8)
    x[::2] = -127
    w = torch.randint(-levels, levels + 1, (256, 64), dtype=torch.int8, generator=g)
    w[:, ::2] = levels
    assert torch.equal(torch._int_mm(x, w).double(), x.double() @ w.double())
    # oneDNN capped at AVX2 runs the kernel an AVX2-only CPU runs
    r = subprocess.run([sys.executable, "-c", "from emotalk_fast.runtime.int8 import weight_levels; print(weight_levels())"],
                       env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "63", r.stderr


@pytest.fixture(scope="module")
def animators():
    return Animator.from_config("tiny", seed=2, device="cpu"), Animator.from_config("tiny", seed=2, device="cpu",
                                                                                     encoders="int8")


@pytest.fixture(scope="module")
def speech():
    return espeak_speech("Streaming speech, pushed in pieces of every size.", speed=190)


def test_int8_encoders_stay_close_to_float32(animators, speech):
    reference, int8 = animators
    layers = reference.config.content.num_layers + reference.config.emotion.num_layers
    assert sum(isinstance(m, Int8Linear) for m in int8.model.modules()) == 4 * layers
    assert not any(isinstance(m, Int8Linear) for m in reference.model.modules())
    assert "int8 encoders" in repr(int8)
    want, got = reference.animate(speech), int8.animate(speech)
    spread = np.abs(want.blendshapes - want.blendshapes.mean(0)).mean()
    deviation = np.abs(got.blendshapes - want.blendshapes).mean() / spread
    assert 1e-4 < deviation < 0.1  # moved (it is int8), but little: 0.03 of the spread measured
    assert np.argmax(got.emotion_logits) == np.argmax(want.emotion_logits)


def test_a_stream_on_int8_encoders_equals_its_long_audio_path(animators, speech):
    """Activations are scaled per row, so a row's result does not depend on what shares its
    batch: the stream and the windowed offline path agree as in float32."""
    from emotalk_fast.model.style import style_weights
    from emotalk_fast.streaming.encoders import encode_windowed
    from emotalk_fast.streaming.settings import StreamSettings

    _, int8 = animators
    settings = {"hop_ms": 100, "lookahead_ms": 200, "context_ms": 1000, "emotion_hop_ms": 300, "encoding": "windowed"}
    stream = int8.stream(whole_utterance_ms=0, **settings)
    frames = np.concatenate([stream.push(speech[i : i + 1600]) for i in range(0, len(speech), 1600)] + [stream.flush()])
    with torch.inference_mode():
        content, emotion = encode_windowed(int8.model, torch.from_numpy(speech), StreamSettings(**settings))
        want, _ = int8.model.decode(content, emotion, *style_weights(int8.config, 1, 0, torch.float32, "cpu"))
    np.testing.assert_allclose(frames, want[0].numpy(), atol=1e-4, rtol=0)


def test_int8_encoders_refuse_other_precisions():
    with pytest.raises(ValueError, match="CPU in float32"):
        Animator.from_config("tiny", device="cpu", dtype="bfloat16", encoders="int8")


def test_the_command_line_option(tmp_path):
    wav = tmp_path / "speech.wav"
    import soundfile

    soundfile.write(str(wav), espeak_speech("Streaming speech, pushed in pieces of every size.", speed=190), 16000)
    run = [sys.executable, "-m", "emotalk_fast", "animate", str(wav), "--random-weights", "tiny", "--encoders", "int8"]
    r = subprocess.run(run + ["-o", str(tmp_path / "out.csv")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.csv").read_text().count("\n") > 30
    r = subprocess.run(run + ["-o", str(tmp_path / "x.csv"), "--dtype", "bf16"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and r.stderr.strip().endswith("--encoders int8 runs on the CPU in float32: drop --dtype "
                                                            "and --device")
    assert "RANDOM weights" not in r.stderr  # refused before any model was built


def test_the_int8_view_leaves_the_float_model_and_shares_its_tensors():
    from emotalk_fast.backends.registry import resolve

    float32 = Animator.from_config("tiny", seed=4, device="cpu", warn_random=False)
    before = {k: v.clone() for k, v in float32.model.state_dict().items()}
    int8 = float32.with_encoders(resolve("int8"))  # beside the float model, as --encoders auto measures it
    assert int8.model is not float32.model
    assert all(torch.equal(v, before[k]) for k, v in float32.model.state_dict().items())
    assert not any(isinstance(m, Int8Linear) for m in float32.model.modules())
    assert int8.model.decoder.qkv.weight is float32.model.decoder.qkv.weight
    shared = {id(p) for p in float32.model.parameters()}
    assert all(id(p) in shared for p in int8.model.parameters())  # the int8 layers hold buffers only


def test_int8_weights_are_cached_and_rebuilt_when_stale(tmp_path, speech):
    from emotalk_fast.backends.int8 import FILE
    from emotalk_fast.backends.registry import resolve

    def animator(seed):
        backend = resolve("int8")
        backend.cache_dir = tmp_path
        made = Animator.from_config("tiny", seed=seed, device="cpu", warn_random=False, encoders=backend)
        return made, backend.loaded_from_cache

    first, cached = animator(5)
    assert cached is False
    want = first.animate(speech).blendshapes
    again, cached = animator(5)
    assert cached is True and np.array_equal(again.animate(speech).blendshapes, want)
    (entry,) = (tmp_path / "int8_encoders").glob("*/" + FILE)
    other, cached = animator(6)  # other weights: another entry, rounded now
    assert cached is False and len(list((tmp_path / "int8_encoders").glob("*/" + FILE))) == 2
    with open(entry, "r+b") as f:  # damaged on disk: rebuilt, the same weights again
        f.seek(entry.stat().st_size // 2)
        f.write(b"\x00" * 64)
    rebuilt, cached = animator(5)
    assert cached is False and np.array_equal(rebuilt.animate(speech).blendshapes, want)


def test_int8_encoders_refuse_a_gpu_and_other_dtypes():
    from emotalk_fast.backends.registry import resolve

    backend = resolve("int8")
    for device, dtype in (("cuda", torch.float32), ("cpu", torch.bfloat16), ("cpu", torch.float16)):
        with pytest.raises(ValueError, match="on the CPU in float32"):
            backend.verify(device, dtype)
