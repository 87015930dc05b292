"""Machine-aware precision: `auto` picks the fastest dtype on the device (on a CPU with native
bfloat16, by a measurement made once per machine), bfloat16 on a CPU that emulates it warns
once, float32 stays the default."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from emotalk_fast.runtime import device as runtime
from emotalk_fast.runtime import dtype_choice
from emotalk_fast.runtime.device import resolve_dtype


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """Pretend to be a CPU with or without native bfloat16 (its /proc/cpuinfo flags), whose
    measurement gives `seconds` (counted in `measured`), with a cache folder of its own."""
    measured = []

    def as_cpu(*flags, seconds=None):
        monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(("avx2", "fma", *flags)))
        runtime._warn_emulated_bf16.cache_clear()
        dtype_choice._chosen.clear()
        if seconds is not None:
            monkeypatch.setattr(dtype_choice, "time_dtypes", lambda: measured.append(seconds) or dict(seconds))

    monkeypatch.setenv("EMOTALK_FAST_CACHE_DIR", str(tmp_path))
    as_cpu.measured = measured
    yield as_cpu
    runtime._warn_emulated_bf16.cache_clear()
    dtype_choice._chosen.clear()


def test_auto_takes_the_faster_where_the_cpu_has_bfloat16_and_measures_once(cpu, tmp_path):
    cpu(seconds={"float32": 1.0, "bfloat16": 2.0})  # AVX2 only: torch emulates bfloat16, nothing measured
    assert resolve_dtype("auto", "cpu") == torch.float32 and cpu.measured == []
    cpu("avx512f", "avx512_bf16", seconds={"float32": 1.0, "bfloat16": 1.6})  # native but slower here
    assert resolve_dtype("auto", "cpu") == torch.float32 and len(cpu.measured) == 1
    cpu("amx_bf16", "amx_tile", seconds={"float32": 1.0, "bfloat16": 0.4})  # another CPU: measured again
    assert resolve_dtype("auto", "cpu") == torch.bfloat16 and len(cpu.measured) == 2
    assert resolve_dtype(None, "cpu") == torch.float32  # the default stays the reference's precision
    dtype_choice._chosen.clear()  # a new process: read from the cache folder, not measured again
    choice = dtype_choice.cpu_dtype_choice(runtime.cpu_description())
    assert choice.dtype == torch.bfloat16 and choice.cached and len(cpu.measured) == 2
    assert choice.describe() == "bfloat16: the faster here (bfloat16 400 ms against float32 1000 ms, measured earlier)"
    (tmp_path / dtype_choice.CACHE_FILE).write_text("{corrupt")  # measured again, never trusted
    dtype_choice._chosen.clear()
    assert resolve_dtype("AUTO", "cpu") == torch.bfloat16 and len(cpu.measured) == 3


def test_the_measurement_times_both_dtypes():
    seconds = dtype_choice.time_dtypes(repeats=1)
    assert set(seconds) == {"float32", "bfloat16"} and all(0 < s < 600 for s in seconds.values())


def test_emulated_bfloat16_warns_once_in_one_line(cpu):
    cpu()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_dtype("bf16", "cpu") == torch.bfloat16
        resolve_dtype(torch.bfloat16, "cpu")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "emulated" in message and "AVX512-BF16" in message and "\n" not in message
    cpu("avx512_bf16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolve_dtype("bf16", "cpu")
        resolve_dtype("float32", "cpu")
    assert not caught


def test_a_onednn_capped_below_bfloat16_counts_as_emulating_it(cpu, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN emulate bfloat16 on any CPU: auto must not choose it."""
    cpu("avx512f", "avx512_bf16", seconds={"float32": 1.0, "bfloat16": 0.5})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert resolve_dtype("auto", "cpu") == torch.float32 and not runtime.cpu_has_native_bf16()
    with pytest.warns(RuntimeWarning, match="emulated"):
        resolve_dtype("bf16", "cpu")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert resolve_dtype("auto", "cpu") == torch.bfloat16


def test_an_avx2_machine_emulated_in_a_process_is_described_as_one():
    """The three caps docs/performance.md uses to measure an AVX2-only machine on a newer CPU."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
           "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    r = subprocess.run([sys.executable, "-c", "from emotalk_fast.runtime import device as runtime; "
                        "print(runtime.cpu_description(), runtime.resolve_dtype('auto', 'cpu'))"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "AVX2, bfloat16 emulated torch.float32"


def test_cpu_description_names_the_class():
    text = runtime.cpu_description()
    assert text.startswith(torch.backends.cpu.get_cpu_capability())
    assert ("AVX512-BF16" in text or "AMX" in text) == runtime.cpu_has_native_bf16()


def test_the_cli_accepts_dtype_auto_and_says_what_it_chose(tmp_path):
    from helpers import espeak_speech

    import soundfile

    wav = tmp_path / "a.wav"
    soundfile.write(str(wav), espeak_speech("Auto precision.", speed=200), 16000)
    r = subprocess.run([sys.executable, "-m", "emotalk_fast", "animate", str(wav), "--random-weights", "mini",
                        "--dtype", "auto", "--device", "cpu", "-o", str(tmp_path / "a.csv")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stderr.splitlines() if "--dtype auto chose" in x)
    if runtime.cpu_has_native_bf16():  # measured: both times given
        assert "the faster here (" in line and "float32" in line and "bfloat16" in line, line
    else:
        assert "chose float32 (CPU " in line, line


def test_a_backend_with_its_own_pool_gets_the_cores_torchs_encoders_take(monkeypatch):
    """ONNX Runtime runs both encoders in one call: it gets the cores PyTorch's two branches would
    take at torch's thread count (serve's 1 thread on 2 cores: both encoders at once, 2 cores)."""
    from emotalk_fast.runtime import threads

    monkeypatch.setattr(threads, "cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert threads.encoder_threads() == 2
        monkeypatch.setattr(threads, "CONCURRENT_BRANCHES", False)
        assert threads.encoder_threads() == 1
        torch.set_num_threads(2)
        assert threads.encoder_threads() == 2
    finally:
        torch.set_num_threads(before)
