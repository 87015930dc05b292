"""The benchmark suites (benchmarks/, not part of this test run) collect every case,
GPU ones included: without CUDA those are skipped with a reason, never dropped."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _pytest(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_benchmarks_collect_gpu_cases():
    ids = _pytest("--collect-only", "-q").splitlines()
    for suite in ("test_offline", "test_decoder", "test_startup", "test_streaming", "test_engine",
                  "test_serve_load"):
        assert any(f"{suite}.py" in i and "[cuda-" in i for i in ids), f"{suite}: no GPU case collected"
        assert any(f"{suite}.py" in i and "[cpu-" in i for i in ids), f"{suite}: no CPU case collected"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the GPU cases run there, not skip")
def test_gpu_cases_skip_without_cuda():
    out = _pytest("-q", "-rs", "-k", "cuda", "--benchmark-disable")
    assert "GPU case: CUDA is not available" in out
    assert " passed" not in out and "error" not in out.lower(), out[-2000:]


def test_vs_release_skips_without_the_release_and_counts_flops():
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("EMOTALK_RELEASE")}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_release.py")], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.startswith("skipped: set EMOTALK_RELEASE_DIR"), r.stdout + r.stderr
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from vs_release import model_flops

    from emotalk_fast import EmoTalkConfig

    # two 24-layer encoders at 30 fps and two CNN front ends on 21.4 s: about 1.09 TFLOP
    assert abs(model_flops(EmoTalkConfig.from_name("emotalk"), int(21.4 * 16000)) / 1e12 - 1.089) < 0.002
