"""The decoder on a GPU: Triton kernels against the PyTorch alternatives. Skipped without CUDA.

    pytest benchmarks/test_bench_kernels.py --benchmark-json=bench_kernels.json

Groups (`benchmark.group`, providers side by side; release decoder: 4 heads of 208, period 30):
- attention-{dtype}-T{T}: causal periodic-ALiBi self-attention over T frames. Providers: triton
  (in-kernel bias), sdpa-bias (SDPA with the bias materialised as [H, T, T], as the release's
  table), eager (softmax(QK^T * scale + bias) V in PyTorch), torch-blocked (the library's PyTorch
  path: closed-form bias per 512 queries + SDPA).
- decode-{dtype}-S{S}: 3 new frames (one 100 ms streaming hop) against a cache of S frames.
- decoder-{dtype}-T{T} and decoder-step-{dtype}-S{S}: the whole decoder layer per backend,
  offline and one streaming step.
- ring-decode-{dtype}-B{B}: the engine's step attention, B streams at their own positions (0 to
  the full 600 s) in one ring of 18000 frames. Providers: triton (reads each row's filled
  length), triton-whole-ring (the span a CUDA graph fixes), torch (the PyTorch path).
extra_info holds the device name, triton.testing.do_bench's median (ms), milliseconds per second
of audio (30 frames) and the peak memory the call adds (MiB).
"""
import gc
import math

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks need CUDA")
triton = pytest.importorskip("triton")

from emotalk_fast.model.config import FPS, DecoderConfig  # noqa: E402
from emotalk_fast.model.decoder import PeriodicCausalDecoder, RingKVCache  # noqa: E402
from emotalk_fast.model.ops import TorchOps, attention_with_periodic_bias  # noqa: E402
from emotalk_fast.kernels.periodic_alibi_attention import periodic_alibi_attention  # noqa: E402
from emotalk_fast.kernels.reference import periodic_alibi_bias  # noqa: E402
from emotalk_fast.kernels.periodic_alibi_decode import periodic_alibi_decode  # noqa: E402

CFG = DecoderConfig()  # release sizes
H, D, PERIOD = CFG.num_heads, CFG.head_dim, CFG.period
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
LENGTHS = [300, 3000, 30000]  # 10 s, 100 s, 1000 s of animation
CACHE_LENGTHS = [300, 3000, 18000, 30000]  # 18000: the stream's default 600 s cache cap
HOP = 3  # frames per 100 ms streaming hop


@pytest.fixture(autouse=True)
def _free_gpu_memory():
    """The [H, T, T] biases of one case are gigabytes: give them back before the next."""
    yield
    gc.collect()
    torch.cuda.empty_cache()


def _qkv(T, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(1, H, T, D, device="cuda", dtype=dtype, generator=g) for _ in range(3)]


def _slopes():
    return torch.tensor(CFG.alibi_slopes(), device="cuda")


def attention_providers(T, dtype):
    q, k, v = _qkv(T, dtype)
    slopes = _slopes()
    scale = 1.0 / math.sqrt(D)

    def eager(bias):
        return torch.softmax((q @ k.transpose(-1, -2)) * scale + bias, -1) @ v

    return {
        "triton": lambda: periodic_alibi_attention(q, k, v, slopes, PERIOD),
        "sdpa-bias": (lambda bias: lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)),
        "eager": (lambda bias: lambda: eager(bias)),
        "torch-blocked": lambda: attention_with_periodic_bias(q, k, v, slopes, PERIOD),
    }, lambda: periodic_alibi_bias(slopes, PERIOD, T, T, dtype=dtype)


def _measure(benchmark, fn, group, provider, frames, **info):
    """Host-clock timing by pytest-benchmark plus do_bench's median; OOM skips the case."""
    def run():
        fn()
        torch.cuda.synchronize()

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        run()  # compiles the kernels; measures the peak memory the call adds
        peak = torch.cuda.max_memory_allocated() - base
        median_ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"{provider} runs out of memory for {group}")
    benchmark.group = group
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(), provider=provider, do_bench_median_ms=median_ms,
        ms_per_audio_s=median_ms / (frames / FPS), peak_mem_mib=peak / 2**20, **info)
    rounds = max(5, min(200, int(2000 / max(median_ms, 1e-3))))  # about 2 s per case
    benchmark.pedantic(run, warmup_rounds=3, rounds=rounds, iterations=1)


@pytest.mark.parametrize("provider", ["triton", "sdpa-bias", "eager", "torch-blocked"])
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_attention(benchmark, dtype, T, provider):
    providers, make_bias = attention_providers(T, DTYPES[dtype])
    fn = providers[provider]
    if provider in ("sdpa-bias", "eager"):
        try:
            fn = fn(make_bias())  # built once, outside the timing, like the release's table
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            pytest.skip(f"the [H, {T}, {T}] bias does not fit")
    _measure(benchmark, fn, f"attention-{dtype}-T{T}", provider, T, T=T, heads=H, head_dim=D)


def decode_providers(S, dtype):
    q, _, _ = _qkv(HOP, dtype, seed=1)
    k, v, _ = _qkv(S, dtype, seed=2)
    slopes, offset = _slopes(), S - HOP
    return {
        "triton": lambda: periodic_alibi_decode(q, k, v, slopes, PERIOD, offset),
        "sdpa-bias": (lambda bias: lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)),
        "torch-blocked": lambda: attention_with_periodic_bias(q, k, v, slopes, PERIOD, offset=offset),
    }, lambda: periodic_alibi_bias(slopes, PERIOD, HOP, S, offset=offset, dtype=dtype)


@pytest.mark.parametrize("provider", ["triton", "sdpa-bias", "torch-blocked"])
@pytest.mark.parametrize("S", CACHE_LENGTHS)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_decode_step_attention(benchmark, dtype, S, provider):
    providers, make_bias = decode_providers(S, DTYPES[dtype])
    fn = providers[provider]
    if provider == "sdpa-bias":
        fn = fn(make_bias())
    _measure(benchmark, fn, f"decode-{dtype}-S{S}", provider, HOP, cache_frames=S, new_frames=HOP)


def _decoder(backend, dtype):
    torch.manual_seed(0)
    dec = PeriodicCausalDecoder(CFG)
    dec.set_backend(backend)
    return dec.to("cuda", dtype).eval()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_decoder_layer(benchmark, dtype, T, backend):
    dec = _decoder(backend, DTYPES[dtype])
    x, memory = (torch.randn(1, T, CFG.feature_dim, device="cuda", dtype=DTYPES[dtype]) for _ in range(2))

    def fn():
        with torch.inference_mode():
            return dec(x, memory)

    _measure(benchmark, fn, f"decoder-{dtype}-T{T}", backend, T, T=T)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("S", CACHE_LENGTHS[:3])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_decoder_step(benchmark, dtype, S, backend):
    dec = _decoder(backend, DTYPES[dtype])
    x, memory = (torch.randn(1, HOP, CFG.feature_dim, device="cuda", dtype=DTYPES[dtype]) for _ in range(2))
    cache = dec.new_cache(1, S + HOP, "cuda", DTYPES[dtype])
    k, v, _ = _qkv(S, DTYPES[dtype], seed=3)
    slot, start = torch.tensor([0], device="cuda"), torch.tensor([S], device="cuda")
    cache.write(slot, torch.tensor([0], device="cuda"), k, v)  # S frames of history

    def fn():  # every call decodes the same hop after the same S frames
        with torch.inference_mode():
            return dec.step_at(x, memory, cache, slot, start, S + HOP)

    _measure(benchmark, fn, f"decoder-step-{dtype}-S{S}", backend, HOP, cache_frames=S, new_frames=HOP)


@pytest.mark.parametrize("provider", ["triton", "triton-whole-ring", "torch"])
@pytest.mark.parametrize("B", [8, 64, 256])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_ring_decode(benchmark, dtype, B, provider):
    capacity = CACHE_LENGTHS[2]
    if provider == "torch" and B > 64:
        pytest.skip("the PyTorch path copies every row's keys and values: tens of GB at this batch")
    g = torch.Generator(device="cuda").manual_seed(4)
    cache = RingKVCache(B, H, D, capacity, "cuda", DTYPES[dtype])
    cache.k.normal_(generator=g)
    cache.v.normal_(generator=g)
    # positions spread from a fresh stream to one whose ring has wrapped
    starts = torch.linspace(0, 1.5 * capacity, B, device="cuda").long()
    slots = torch.arange(B, device="cuda")
    q = torch.randn(B, H, HOP, D, device="cuda", dtype=DTYPES[dtype], generator=g)
    slopes = _slopes()
    filled = min(capacity, int(starts.max()) + HOP)
    fn = {
        "triton": lambda: periodic_alibi_decode(q, cache.k, cache.v, slopes, PERIOD, starts, slots=slots, span=filled),
        "triton-whole-ring": lambda: periodic_alibi_decode(q, cache.k, cache.v, slopes, PERIOD, starts, slots=slots),
        "torch": lambda: TorchOps.ring_attention(q, cache, slots, starts, filled, slopes, PERIOD),
    }[provider]
    _measure(benchmark, fn, f"ring-decode-{dtype}-B{B}", provider, HOP * B, streams=B, ring_frames=capacity)
