"""backend="triton": the decoder on the Triton kernels (the interpreter on CPU) against the oracle
fixtures and the PyTorch path; the KV-cached step on the decode kernel; backend dispatch."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from emotalk_fast import Animator, EmoTalkConfig
from emotalk_fast.animator import resolve_backend
from emotalk_fast.model.checkpoint import random_release_state_dict, release_to_fast
from emotalk_fast.cli import main as cli_main
from emotalk_fast.model.config import DecoderConfig
from emotalk_fast.model.decoder import PeriodicCausalDecoder
from helpers import FIXTURES, assert_close, assert_close_to_dtype, decode_in_steps, load_oracle

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ORACLE_TOL = 1e-4  # as tests/model/test_oracle_parity.py
TOL = 1e-5
# PPE on, an odd period, 8 heads of 6 (padded to 16 in the kernels)
ODD = DecoderConfig(content_dim=20, emotion_dim=12, style_dim=8, num_heads=8, ff_dim=24, period=7, ppe=True)


def _decoder(cfg, backend, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    dec = PeriodicCausalDecoder(cfg)
    with torch.no_grad():  # LayerNorm affine off its 1/0 init, so a swapped weight shows
        for norm in (dec.norm1, dec.norm2, dec.norm3):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    dec.set_backend(backend)
    return dec.to(DEVICE, dtype).eval()


def _inputs(cfg, B, T, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, cfg.feature_dim, generator=g)
    memory = torch.randn(B, T, cfg.feature_dim, generator=g)
    return x.to(DEVICE, dtype), memory.to(DEVICE, dtype)


def _speechlike(n, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return (0.1 * torch.sin(2 * torch.pi * 140 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
            + 0.02 * torch.randn(n, generator=g)).numpy()


# --- the whole model against the released code's outputs ------------------------------------
@pytest.fixture(scope="module")
def oracle_animator():
    cfg = EmoTalkConfig.from_name("mini")  # the release decoder: 832 wide, 4 heads of 208
    seed = json.loads((FIXTURES / "oracle_mini" / "oracle.json").read_text())["seed"]
    state_dict = release_to_fast(random_release_state_dict(cfg, seed), cfg)
    return Animator.from_state_dict(cfg, state_dict, device=DEVICE, backend="triton")


@pytest.mark.parametrize("clip,level,person", [("speech16k", 1, 0), ("short16k", 0, 5)])
def test_triton_model_matches_release(oracle_animator, clip, level, person):
    assert oracle_animator.model.decoder.backend == "triton"
    fx = load_oracle(clip)
    wave = torch.from_numpy(fx["audio"])[None].to(DEVICE)
    with torch.inference_mode():
        out = oracle_animator.model(wave, torch.tensor([wave.shape[1]]), torch.tensor([level]),
                                    torch.tensor([person]))
    for name in ("decoder_out", "blendshapes"):
        want = fx[f"{name}_l{level}_p{person}"]
        assert_close(getattr(out, name)[0], want, ORACLE_TOL, f"triton {clip} {name}")


# --- the decoder: Triton against PyTorch ----------------------------------------------------
@pytest.mark.parametrize("B,T", [(1, 1), (2, 37)])
def test_triton_decoder_matches_torch(B, T):
    x, memory = _inputs(ODD, B, T, seed=T)
    with torch.no_grad():
        want = _decoder(ODD, "torch")(x, memory)
        got = _decoder(ODD, "triton")(x, memory)
    assert_close(got, want, TOL, f"B={B} T={T}")


def test_triton_decoder_fp16_within_torch_error():
    """fp16: no further from the float64 truth than twice PyTorch's own fp16 error."""
    x, memory = _inputs(ODD, 2, 45, seed=3)
    with torch.no_grad():
        ref64 = _decoder(ODD, "torch", dtype=torch.float64)(x.double(), memory.double())
        torch16 = _decoder(ODD, "torch", dtype=torch.float16)(x.half(), memory.half())
        triton16 = _decoder(ODD, "triton", dtype=torch.float16)(x.half(), memory.half())
    assert triton16.dtype == torch.float16
    assert_close_to_dtype(triton16, torch16, ref64, "fp16 decoder", eps=1e-3)


def _chunks(total, seed, most=20):
    """Random chunk sizes 1..most (both sides of the decode kernel's 16-query limit)."""
    g = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(min(g.integers(1, most + 1), total - sum(sizes))))
    return sizes


def _run_steps(dec, x, memory, sizes, cache):
    return decode_in_steps(dec, x, memory, cache, sizes)


def test_triton_step_equals_offline():
    dec = _decoder(ODD, "triton")
    x, memory = _inputs(ODD, 1, 90, seed=5)  # past the kernels' 64-key blocks
    sizes = _chunks(90, seed=1)
    assert min(sizes) <= 16 < max(sizes)  # the decode kernel, and prefill with an offset
    with torch.no_grad():
        offline = dec(x, memory)
        stepped = _run_steps(dec, x, memory, sizes, dec.new_cache(1, 90, DEVICE))
    assert_close(stepped, offline, TOL, f"chunks {sizes}")


def test_triton_step_sliding_window_matches_torch():
    """A capped cache drops old frames (the ring overwrites them): torch and triton agree."""
    x, memory = _inputs(ODD, 1, 60, seed=6)
    sizes = _chunks(60, seed=2, most=9)
    with torch.no_grad():
        torch_dec, triton_dec = _decoder(ODD, "torch"), _decoder(ODD, "triton")
        want = _run_steps(torch_dec, x, memory, sizes, torch_dec.new_cache(1, 17, DEVICE))
        got = _run_steps(triton_dec, x, memory, sizes, triton_dec.new_cache(1, 17, DEVICE))
    assert_close(got, want, TOL, f"chunks {sizes}")


# --- through the Animator ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_animators():
    return {b: Animator.from_config("tiny", seed=2, device=DEVICE, backend=b) for b in ("torch", "triton")}


def test_triton_ragged_batch_matches_single_calls(tiny_animators):
    clips = [_speechlike(n, i) for i, n in enumerate([16000, 720, 9067])]
    triton_anim = tiny_animators["triton"]
    batch = triton_anim.animate_batch(clips, level=[1, 0, 1], person=[0, 5, 23])
    torch_batch = tiny_animators["torch"].animate_batch(clips, level=[1, 0, 1], person=[0, 5, 23])
    for i, (clip, level, person) in enumerate(zip(clips, [1, 0, 1], [0, 5, 23])):
        single = triton_anim.animate(clip, level=level, person=person)
        assert_close(batch[i].blendshapes, single.blendshapes, TOL, f"clip {i} batch vs single")
        assert_close(batch[i].blendshapes, torch_batch[i].blendshapes, TOL, f"clip {i} triton vs torch")


def test_triton_stream_matches_torch_stream(tiny_animators):
    wave = _speechlike(16000, 9)
    frames = {}
    for backend, animator in tiny_animators.items():
        stream = animator.stream(level=1, person=3, hop_ms=300)  # 9 frames a step: the decode kernel
        out = [stream.push(wave[i : i + 3000]) for i in range(0, len(wave), 3000)]
        frames[backend] = np.concatenate(out + [stream.flush()])
    assert_close(frames["triton"], frames["torch"], TOL, "stream")


def test_cli_backend_option(tmp_path):
    torch.save(random_release_state_dict(EmoTalkConfig.from_name("tiny"), seed=4), tmp_path / "EmoTalk.pth")
    soundfile.write(tmp_path / "speech.wav", _speechlike(8000, 1), 16000)
    outs = {}
    for backend in ("torch", "triton"):
        outs[backend] = tmp_path / f"{backend}.npy"
        assert cli_main(["animate", str(tmp_path / "speech.wav"), "-o", str(outs[backend]), "--checkpoint",
                         str(tmp_path / "EmoTalk.pth"), "--device", DEVICE, "--backend", backend]) == 0
    assert_close(np.load(outs["triton"]), np.load(outs["torch"]), TOL, "cli")
    with pytest.raises(SystemExit):
        cli_main(["animate", "a.wav", "-o", "a.npy", "--checkpoint", "x.pth", "--backend", "tensorrt"])


# --- dispatch ---------------------------------------------------------------------------------
def test_auto_dispatch():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"  # triton imports here
    assert resolve_backend("torch", torch.device("cuda")) == "torch"
    assert Animator.from_config("tiny", device="cpu").model.decoder.backend == "torch"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", torch.device("cpu")) == "triton"
    with pytest.raises(ValueError, match="bfloat16"):
        resolve_backend("triton", torch.device("cpu"), torch.bfloat16)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="need a CUDA device.*TRITON_INTERPRET=1"):
        Animator.from_config("tiny", device="cpu", backend="triton")


def test_triton_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    with pytest.raises(ValueError, match="triton is not installed"):
        resolve_backend("triton", torch.device("cuda"))
    assert resolve_backend("auto", torch.device("cuda")) == "torch"


def test_import_does_not_import_triton():
    code = ("import sys, emotalk_fast; emotalk_fast.Animator.from_config('tiny', device='cpu', backend='torch');"
            "sys.exit('triton' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr or "import emotalk_fast imported triton"
