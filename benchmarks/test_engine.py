"""The batched streaming engine: one `step()` advancing B warm streams by a 100 ms hop, for the
release-size model (float32, bfloat16) and the mini model, B = 1..16 on CPU and up to 256 on a
GPU. extra_info carries the per-stream cost. The GPU cases time the eager engine and the one
whose hops replay CUDA graphs (`cuda_graphs=True`), side by side; they skip without CUDA."""
import functools

import pytest
import torch

from benchutil import HAS_CUDA, measure, speech
from engine_load import build, warm_engine

CPU_BATCHES = (1, 2, 4, 8, 16)
GPU_BATCHES = (1, 8, 32, 64, 128, 256)


def _cases():
    out = []
    for device, batches in (("cpu", CPU_BATCHES), ("cuda", GPU_BATCHES)):
        for preset, dtypes in (("emotalk", ("float32", "bfloat16", "float16")), ("mini", ("float32",))):
            for dtype in dtypes:
                for b in batches:
                    for graphs in ((False, True) if device == "cuda" else (False,)):
                        marks = [pytest.mark.gpu] if device == "cuda" else []
                        if device == "cuda" and not HAS_CUDA:
                            marks.append(pytest.mark.skip(reason="GPU case: CUDA is not available"))
                        elif device == "cpu" and dtype == "float16":
                            marks.append(pytest.mark.skip(reason="float16 is a GPU dtype; use bfloat16 on CPU"))
                        name = f"{device}-{preset}-{dtype}-B{b}{'-graphs' if graphs else ''}"
                        out.append(pytest.param(device, preset, dtype, b, graphs, marks=marks, id=name))
    return out


@functools.lru_cache(maxsize=2)
def _animator(preset, device, dtype):
    return build(preset, device, dtype)


@pytest.mark.parametrize("device,preset,dtype,batch,cuda_graphs", _cases())
def test_engine_hop(benchmark, device, preset, dtype, batch, cuda_graphs):
    if device == "cpu" and dtype == "bfloat16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bfloat16 (AVX512-BF16 / AMX)")
    animator = _animator(preset, device, dtype)
    audio = speech(60)
    engine, ids, position = warm_engine(animator, batch, 100, audio, cuda_graphs)
    hop = 1600

    def run():
        nonlocal position
        for sid in ids:
            engine.push(sid, audio[position : position + hop])
        position += hop
        out = engine.step()
        assert len(out) == batch
        return out

    measure(benchmark, run, op=f"engine-{preset}", dtype=dtype, shape=f"B{batch}", device=device,
            provider="emotalk_fast-engine" + ("-cuda-graphs" if cuda_graphs else ""), audio_seconds=0.1 * batch, rounds=3, warmup_rounds=1,
            streams=batch)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["ms_per_stream_hop"] = 1000 * stats.stats.median / batch
