"""`emotalk-fast serve` under N concurrent clients (serve_load.py, one round per case): first-packet
latency p50/p99 and output fps p1/median in extra_info. A server process per case
(`--random-weights`); GPU cases are collected and skipped without CUDA."""
import pytest

from benchutil import HAS_CUDA
from serve_load import run_case, start_server

CASES = [("cpu", "mini", "float32", n, 5.0) for n in (1, 4, 8)]
CASES += [("cpu", "emotalk", "bfloat16", n, 5.0) for n in (1, 2)]
CASES += [("cuda", "emotalk", dtype, n, 10.0) for dtype in ("float16", "bfloat16") for n in (1, 8, 32, 64)]


def _params():
    out = []
    for device, preset, dtype, clients, seconds in CASES:
        marks = [pytest.mark.gpu] if device == "cuda" else []
        if device == "cuda" and not HAS_CUDA:
            marks.append(pytest.mark.skip(reason="GPU case: CUDA is not available"))
        out.append(pytest.param(device, preset, dtype, clients, seconds, marks=marks,
                                id=f"{device}-{preset}-{dtype}-{clients}clients-{seconds:g}s"))
    return out


@pytest.mark.parametrize("device,preset,dtype,clients,seconds", _params())
def test_serve_load(benchmark, device, preset, dtype, clients, seconds):
    import torch

    if device == "cpu" and dtype == "bfloat16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bfloat16 (AVX512-BF16 / AMX)")
    proc, address = start_server(preset, dtype, device, clients)
    try:
        row = benchmark.pedantic(run_case, args=(address, clients, seconds, False), rounds=1, iterations=1)
    finally:
        proc.terminate()
        proc.wait(60)
    assert row["ok"] == clients, row["errors"]
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "errors"})
    benchmark.extra_info.update(device=device, preset=preset, dtype=dtype)
