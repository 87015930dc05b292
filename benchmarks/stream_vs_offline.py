"""Compute per second of audio: a live stream at a hop (each encoding) against offline animation
of the same speech, in one process, interleaved, the fastest of `--repeats` rounds.

    python benchmarks/stream_vs_offline.py --preset emotalk --hops 600 --seconds 20
    python benchmarks/stream_vs_offline.py --preset emotalk --hops 100,600 --encodings windowed,incremental

The stream is pushed its audio a hop at a time as fast as it computes (no pacing: compute only),
with serve's threads on a CPU (one core fewer than the machine, the two encoders at once where
they fit); offline runs with the same threads.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalk_fast import Animator  # noqa: E402
from emotalk_fast.model.config import SAMPLE_RATE  # noqa: E402
from emotalk_fast.runtime.device import cpu_description  # noqa: E402
from emotalk_fast.runtime.threads import serve_threads  # noqa: E402
from emotalk_fast.tools.measure import generated_speech, versions  # noqa: E402


def offline_s(animator: Animator, speech) -> float:
    t0 = time.perf_counter()
    animator.animate(speech)
    return time.perf_counter() - t0


def stream_s(animator: Animator, speech, hop_ms: int, encoding: str) -> float:
    stream = animator.stream(hop_ms=hop_ms, encoding=encoding)
    hop = hop_ms * SAMPLE_RATE // 1000
    t0 = time.perf_counter()
    for i in range(0, len(speech), hop):
        stream.push(speech[i : i + hop])
    stream.flush()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="emotalk", help="model size (random weights): mini, tiny or emotalk")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--hops", default="600", help="stream hops in ms, comma-separated")
    p.add_argument("--encodings", default="windowed,incremental")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the generated speech")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default serve's: one core fewer)")
    args = p.parse_args()
    threads = args.threads or serve_threads()
    torch.set_num_threads(threads)
    animator = Animator.from_config(args.preset, device="cpu", dtype=args.dtype, warn_random=False)
    speech = generated_speech(args.seconds)
    cases = [("offline", None, None)] + [("stream", int(h), e) for h in args.hops.split(",")
                                          for e in args.encodings.split(",")]
    best = {c: float("inf") for c in cases}
    stream_s(animator, speech[: 2 * SAMPLE_RATE], 100, "incremental")  # warm-up
    for r in range(args.repeats):  # interleaved: a noisy neighbour hits every case alike
        for c in cases:
            took = offline_s(animator, speech) if c[0] == "offline" else stream_s(animator, speech, c[1], c[2])
            best[c] = min(best[c], took)
            print(f"[{r + 1}/{args.repeats}] {c}: {took:.2f} s", file=sys.stderr, flush=True)
    v = versions()
    print(f"{args.preset} {args.dtype}, {args.seconds:g} s of speech, {cpu_description()}, {threads} torch "
          f"thread{'s' if threads != 1 else ''}; torch {v['torch']}; fastest of {args.repeats}, interleaved\n")
    print("| run | compute per second of audio | against offline |")
    print("| --- | --- | --- |")
    base = best[cases[0]] / args.seconds
    for c in cases:
        per_s = best[c] / args.seconds
        name = "offline (animate)" if c[0] == "offline" else f"stream, {c[1]} ms hops, {c[2]}"
        print(f"| {name} | {per_s:.2f} s | {per_s / base:.2f}x |")


if __name__ == "__main__":
    main()
