"""Streaming: compute per hop once the stream is warm (`animator.stream(...)`, `push(samples)`),
after 10 s of history. CUDA graphs for the fixed-shape hop are a GPU lever for this code path
(not done: no GPU was available to measure it)."""
import pytest

from benchutil import cases, fast_animator, measure, require, speech


def _skip_reference(device, provider, dtype):
    return "the reference has no streaming mode" if provider == "reference" else None


@pytest.mark.parametrize("hop_ms", [100, 200])
@pytest.mark.parametrize("device,provider,dtype", cases(_skip_reference))
def test_stream_hop(benchmark, device, provider, dtype, hop_ms):
    require(device, provider, dtype)
    animator = fast_animator(device, dtype, provider.split("-")[1])
    audio = speech(30)
    hop = 16 * hop_ms
    stream = animator.stream(level=1, person=0, hop_ms=hop_ms)
    position = 0
    while position < 10 * 16000:  # 10 s of history: the steady state
        stream.push(audio[position: position + hop])
        position += hop

    def run():
        nonlocal position
        out = stream.push(audio[position: position + hop])
        position += hop
        return out
    measure(benchmark, run, op="stream", dtype=dtype, shape=f"{hop_ms}ms-hop", device=device, provider=provider,
            audio_seconds=hop_ms / 1000, rounds=20, warmup_rounds=3)
