"""A streaming hop in ONNX Runtime against the same hop in PyTorch: the streaming export
(`export-onnx --streaming`) driven by examples/onnx_stream.py, and the library's own stream at
the same settings, interleaved, at 1 and 2 threads; the median of the steady hops.

    python benchmarks/onnx_stream_hop.py --preset emotalk --hops 100,600 --seconds 8
    python benchmarks/onnx_stream_hop.py --preset mini --hops 100 --seconds 2

Both run incremental encoding with no ramp (the export's one hop length). PyTorch runs the two
encoders at once when the threads leave a core for each (1 thread on 2 cores); ONNX Runtime runs
the graph with `intra_op_num_threads` threads.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emotalk_fast import Animator  # noqa: E402
from emotalk_fast.model.config import SAMPLE_RATE  # noqa: E402
from emotalk_fast.runtime.device import cpu_description  # noqa: E402
from emotalk_fast.export.onnx_stream import export_stream_onnx  # noqa: E402
from emotalk_fast.streaming.settings import StreamSettings  # noqa: E402
from emotalk_fast.tools.measure import generated_speech, versions  # noqa: E402


def _host():
    spec = importlib.util.spec_from_file_location("onnx_stream_example", ROOT / "examples" / "onnx_stream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_hops(animator: Animator, settings: StreamSettings, speech) -> list[float]:
    """Seconds of each hop of the library's stream, pushed a hop of audio at a time."""
    stream = animator.stream(settings=settings)
    hop = settings.hop_ms * SAMPLE_RATE // 1000
    took = []
    for i in range(0, len(speech) - hop + 1, hop):
        t0 = time.perf_counter()
        frames = stream.push(speech[i : i + hop])
        if len(frames):
            took.append(time.perf_counter() - t0)
    return took


def ort_hops(host, session, speech, hop: int) -> list[float]:
    """Seconds of each hop run by the ONNX Runtime loop, pushed a hop of audio at a time."""
    stream = host.OnnxStream(session)
    run, took = stream.run, []

    def timed(*args):
        t0 = time.perf_counter()
        out = run(*args)
        took.append(time.perf_counter() - t0)
        return out

    stream.run = timed
    for i in range(0, len(speech) - hop + 1, hop):
        stream.push(speech[i : i + hop])
    return took


def main() -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="emotalk")
    p.add_argument("--hops", default="100,600")
    p.add_argument("--context-ms", type=int, default=2000)
    p.add_argument("--lookahead-ms", type=int, default=200)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--threads", default="1,2")
    args = p.parse_args()
    animator = Animator.from_config(args.preset, device="cpu", warn_random=False)
    speech = generated_speech(args.seconds)
    host = _host()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hop_ms in (int(h) for h in args.hops.split(",")):
            settings = StreamSettings(hop_ms=hop_ms, lookahead_ms=args.lookahead_ms, context_ms=args.context_ms,
                                      ramp=False, whole_utterance_ms=0, encoding="incremental", max_cache_s=20.0)
            path = Path(tmp) / f"hop{hop_ms}.onnx"
            t0 = time.perf_counter()
            export_stream_onnx(animator.model, path, settings)
            print(f"[onnx_stream_hop] exported {hop_ms} ms hops in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                steady = settings.context_ms // hop_ms + 1  # hops before the rings are full are cheaper
                ort_hops(host, session, speech[: 2 * SAMPLE_RATE], hop_ms * 16)  # warm-up
                torch_hops(animator, settings, speech[: 2 * SAMPLE_RATE])
                t_ms = statistics.median(torch_hops(animator, settings, speech)[steady:]) * 1000
                o_ms = statistics.median(ort_hops(host, session, speech, hop_ms * 16)[steady:]) * 1000
                rows.append((hop_ms, threads, t_ms, o_ms))
                print(f"[onnx_stream_hop] {hop_ms} ms, {threads} threads: torch {t_ms:.0f} ms, ORT {o_ms:.0f} ms",
                      file=sys.stderr, flush=True)
    v = versions()
    print(f"{args.preset} float32, context {args.context_ms} ms, lookahead {args.lookahead_ms} ms, "
          f"{cpu_description()}; torch {v['torch']}, onnxruntime {ort.__version__}; median of the steady hops "
          f"of {args.seconds:g} s of speech\n")
    print("| hop | threads | PyTorch (library stream) | ONNX Runtime (streaming export) | ORT / PyTorch |")
    print("| --- | --- | --- | --- | --- |")
    for hop_ms, threads, t_ms, o_ms in rows:
        print(f"| {hop_ms} ms | {threads} | {t_ms:.0f} ms | {o_ms:.0f} ms | {o_ms / t_ms:.2f}x |")


if __name__ == "__main__":
    main()
