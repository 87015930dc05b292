"""Machine-aware precision: `auto` picks the fastest dtype native on the device, bfloat16 on a
CPU that emulates it warns once, float32 stays the default."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from emotalk_fast.runtime import device as runtime
from emotalk_fast.runtime.device import resolve_dtype


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with or without native bfloat16 (its /proc/cpuinfo flags)."""
    def as_cpu(*flags):
        monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(("avx2", "fma", *flags)))
        runtime._warn_emulated_bf16.cache_clear()

    yield as_cpu
    runtime._warn_emulated_bf16.cache_clear()


def test_auto_picks_bfloat16_only_where_the_cpu_has_it(cpu):
    cpu()  # AVX2 only: torch emulates bfloat16
    assert resolve_dtype("auto", "cpu") == torch.float32
    cpu("avx512f", "avx512_bf16")
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    cpu("amx_bf16", "amx_tile")
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype(None, "cpu") == torch.float32  # the default stays the reference's precision
    assert resolve_dtype("AUTO", "cpu") in (torch.float32, torch.bfloat16)


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
    cpu("avx512f", "avx512_bf16")
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
    chosen = "bfloat16" if runtime.cpu_has_native_bf16() else "float32"
    assert chosen in r.stdout + r.stderr
