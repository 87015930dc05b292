"""The streaming engine under load: per-hop compute and per-stream cost by batch size, and how
many streams it holds in real time.

    python benchmarks/engine_load.py --preset mini --dtype float32
    python benchmarks/engine_load.py --preset emotalk --dtype bfloat16 --batches 1,2,4,8,16
    python benchmarks/engine_load.py --preset emotalk --dtype float16 --device cuda --batches 1,8,64,256 --cuda-graphs both

Streams held in real time: N streams are pushed one hop of audio every hop (on the wall clock,
as microphones would), the engine steps until drained, and a hop's latency is the time from
its audio's arrival to its frames; N is held when the p99 latency stays under the hop (the
backlog does not grow). Random weights (speed does not depend on them), espeak-ng speech.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalk_fast import Animator, EmoTalkConfig  # noqa: E402
from emotalk_fast.streaming.engine import StreamEngine  # noqa: E402
from emotalk_fast.streaming.settings import StreamSettings  # noqa: E402
from emotalk_fast.tools.measure import device_name, generated_speech, sync, versions  # noqa: E402

CONTEXT_MS, LOOKAHEAD_MS = 2000, 200


def build(preset: str, device: str, dtype: str) -> Animator:
    cfg = EmoTalkConfig.from_name(preset)
    return Animator.from_config(cfg, device=device, dtype=dtype)


def warm_engine(animator: Animator, streams: int, hop_ms: int, speech: np.ndarray,
                cuda_graphs: bool = False, encoding: str = "windowed") -> tuple[StreamEngine, list, int]:
    """An engine with `streams` streams, each past its start-up windows (steady state; with
    cuda_graphs, its bucket's graph captured)."""
    settings = StreamSettings(hop_ms=hop_ms, lookahead_ms=LOOKAHEAD_MS, context_ms=CONTEXT_MS, max_cache_s=60.0,
                              encoding=encoding)
    engine = StreamEngine(animator.model, animator.device, animator.dtype, settings, max_streams=streams,
                          cuda_graphs=cuda_graphs, encoders=animator.encoder_backend)
    if cuda_graphs:
        engine.prepare_static_hops()
    ids = [engine.open(level=1, person=i % 24) for i in range(streams)]
    position = (CONTEXT_MS + LOOKAHEAD_MS + 2 * hop_ms) * 16
    for sid in ids:
        engine.push(sid, speech[:position])
    while engine.step():
        pass
    return engine, ids, position


def hop_cost(animator: Animator, streams: int, hop_ms: int, speech: np.ndarray, rounds: int = 3,
             cuda_graphs: bool = False, encoding: str = "windowed") -> float:
    """Median seconds of one `step()` that advances all `streams` by one hop."""
    engine, ids, position = warm_engine(animator, streams, hop_ms, speech, cuda_graphs, encoding)
    hop = 16 * hop_ms
    times = []
    for _ in range(rounds):
        for sid in ids:
            engine.push(sid, speech[position : position + hop])
        position += hop
        sync(animator.device)
        t0 = time.perf_counter()
        out = engine.step()
        sync(animator.device)
        times.append(time.perf_counter() - t0)
        assert len(out) == streams
    return float(np.median(times))


def realtime(animator: Animator, streams: int, hop_ms: int, speech: np.ndarray, seconds: float,
             cuda_graphs: bool = False, encoding: str = "windowed") -> dict:
    """Push one hop per stream every hop_ms on the wall clock for `seconds`; latency per hop."""
    engine, ids, position = warm_engine(animator, streams, hop_ms, speech, cuda_graphs, encoding)
    hop, latencies = 16 * hop_ms, []
    start = time.perf_counter()
    for k in range(int(seconds * 1000 / hop_ms)):
        arrival = start + (k + 1) * hop_ms / 1000
        time.sleep(max(0.0, arrival - time.perf_counter()))
        for sid in ids:
            engine.push(sid, speech[position : position + hop])
        position += hop
        while engine.step():
            pass
        sync(animator.device)
        latencies.append(time.perf_counter() - arrival)
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"streams": streams, "p50_ms": 1000 * p50, "p99_ms": 1000 * p99, "held": bool(p99 < hop_ms / 1000)}


def capacity(animator: Animator, hop_ms: int, speech: np.ndarray, seconds: float, most: int,
             cuda_graphs: bool = False, encoding: str = "windowed") -> dict:
    """The largest N (doubling, then the best held) whose real-time run keeps up."""
    best, n = None, 1
    while n <= most:
        r = realtime(animator, n, hop_ms, speech, seconds, cuda_graphs, encoding)
        print(f"    {hop_ms} ms hops, {n} streams: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
              f"{'held' if r['held'] else 'falls behind'}", file=sys.stderr, flush=True)
        if not r["held"]:
            break
        best, n = r, 2 * n
    return best or {"streams": 0, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "held": False}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mini")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default="1,2,4,8,16")
    p.add_argument("--hops", default="100,200,400", help="hop sizes (ms) for streams held in real time")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each real-time run")
    p.add_argument("--most", type=int, default=64, help="largest N tried in real time")
    p.add_argument("--cuda-graphs", choices=("off", "on", "both"), default="off",
                   help="on: static shapes, each batch bucket's hop a CUDA graph (on the CPU: static shapes, "
                        "eager); both: the per-hop table for each, interleaved batch by batch")
    p.add_argument("--encodings", default="windowed",
                   help="windowed (default: the tables of docs/engine.md), incremental or both (comma-separated), "
                        "interleaved")
    args = p.parse_args()
    animator = build(args.preset, args.device, args.dtype)
    speech = generated_speech(120.0)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"# {args.preset}, {args.dtype} on {device_name(animator.device)}; {versions()}")
    graph_modes = {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graphs]
    modes = [(e, g) for e in args.encodings.split(",") for g in graph_modes]  # side by side
    print(f"# context {CONTEXT_MS} ms, lookahead {LOOKAHEAD_MS} ms, 100 ms hops")
    print("| streams in the batch | engine | compute per hop | per stream | real-time streams by this cost |")
    print("| --- | --- | --- | --- | --- |")
    for b in batches:
        for encoding, graphs in modes:
            t = hop_cost(animator, b, 100, speech, cuda_graphs=graphs, encoding=encoding)
            print(f"| {b} | {_engine_name(graphs, args.device)}, {encoding} | {1000 * t:.0f} ms | "
                  f"{1000 * t / b:.1f} ms | "
                  f"{int(b * 0.1 / t) if t else 0} |", flush=True)
    print()
    print("| hop | engine | streams held in real time | p50 hop latency | p99 hop latency |")
    print("| --- | --- | --- | --- | --- |")
    for hop_ms in (int(h) for h in args.hops.split(",")):
        for encoding, graphs in modes:
            r = capacity(animator, hop_ms, speech, args.seconds, args.most, graphs, encoding)
            print(f"| {hop_ms} ms | {_engine_name(graphs, args.device)}, {encoding} | {r['streams']} | "
                  f"{r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms |", flush=True)


def _engine_name(cuda_graphs: bool, device: str) -> str:
    if not cuda_graphs:
        return "eager"
    return "CUDA graphs" if device.startswith("cuda") else "static shapes"


if __name__ == "__main__":
    main()
