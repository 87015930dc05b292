"""A live hop against its memory floor: the steady hop of 1..N batched streams at 100 ms hops
(incremental encoding, every ring full) per encoder backend, beside the least it can take (both
encoders' weights, at the precision each runs them, over the machine's memory read bandwidth),
on a CPU at serve's threads and at all cores; in one process, interleaved, the fastest of
`--rounds`. On a GPU the last line says up to how many streams a batch stays within twice the
floor: bound by reading the weights, not by the rows.

    python benchmarks/hop_floor.py --preset emotalk --backends torch,int8,onnx --streams 1,2,4
    python benchmarks/hop_floor.py --preset emotalk --device cuda --dtype bfloat16 --streams 1,8,64,256
    python benchmarks/hop_floor.py --preset mini --backends torch,int8 --streams 1,2 --rounds 1   # a quick check

Release-size random weights time exactly what a checkpoint would (speed does not depend on the
weights). `--json FILE` writes every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalk_fast import Animator  # noqa: E402
from emotalk_fast.backends.registry import resolve  # noqa: E402
from emotalk_fast.runtime.device import cpu_description  # noqa: E402
from emotalk_fast.runtime.memory_floor import MemoryFloor, read_bandwidth  # noqa: E402
from emotalk_fast.runtime.threads import cores, serve_threads  # noqa: E402
from emotalk_fast.streaming.executor import time_steady_hop  # noqa: E402
from emotalk_fast.streaming.grid import StreamGrid  # noqa: E402
from emotalk_fast.streaming.settings import StreamSettings  # noqa: E402
from emotalk_fast.tools.measure import device_name, versions  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="emotalk", help="model size (random weights): mini, tiny or emotalk")
    p.add_argument("--backends", default="torch,int8", help="encoder backends, comma-separated (onnx exports once)")
    p.add_argument("--streams", default="1,2,4", help="batched streams, comma-separated")
    p.add_argument("--hop-ms", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", default=None, help="torch thread counts, comma-separated (default: serve's and all cores)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    streams = [int(n) for n in args.streams.split(",")]
    threads = sorted({int(t) for t in args.threads.split(",")} if args.threads else {serve_threads(), cores()})
    if args.device != "cpu":
        threads = threads[-1:]  # the host's threads barely matter there

    base = Animator.from_config(args.preset, seed=0, device=args.device, dtype=args.dtype, warn_random=False)
    device, dtype = base.device, base.dtype
    animators = {name: base if name == "torch" else base.with_encoders(resolve(name)) for name in args.backends.split(",")}
    settings = StreamSettings(hop_ms=args.hop_ms, encoding="incremental")
    grid = StreamGrid.for_model(settings, base.config)
    floors = {name: MemoryFloor.of(a.model, device) for name, a in animators.items()}
    best: dict[tuple, float] = {}
    for t in threads:
        torch.set_num_threads(t)
        for name, a in animators.items():  # warm-up (and ONNX Runtime's export, once)
            time_steady_hop(a.model, device, dtype, grid, 1, repeats=1, encoders=a.encoder_backend)
        for r in range(args.rounds):  # interleaved: a noisy neighbour hits every case alike
            for name, a in animators.items():
                for n in streams:
                    took = time_steady_hop(a.model, device, dtype, grid, n, repeats=1, encoders=a.encoder_backend)[0]
                    key = (t, name, n)
                    best[key] = min(best.get(key, float("inf")), took)
                    print(f"[{r + 1}/{args.rounds}] {t} threads, {name}, {n} streams: {1000 * took:.0f} ms", file=sys.stderr,
                          flush=True)

    v = versions()
    where = f"CPU {cpu_description()}" if device.type == "cpu" else device_name(device)
    print(f"{args.preset} {str(dtype).replace('torch.', '')}, random weights, {args.hop_ms} ms hops, incremental; "
          f"{where}, memory reads {read_bandwidth(device.type) / 1e9:.1f} GB/s; torch {v['torch']}; "
          f"{time.strftime('%Y-%m-%d')}; fastest of {args.rounds}, interleaved\n")
    print("| torch threads | encoders | weights | memory floor | " + " | ".join(f"{n} stream{'s' if n > 1 else ''}" for n in streams)
          + f" | {max(streams)} / 1 |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in streams) + " | --- |")
    for t in threads:
        for name in animators:
            f = floors[name]
            cells = [f"{1000 * best[(t, name, n)]:.0f} ms ({best[(t, name, n)] / f.seconds:.1f}x)" for n in streams]
            ratio = best[(t, name, max(streams))] / best[(t, name, min(streams))]
            print(f"| {t} | {name} | {f.weight_bytes / 1e9:.2f} GB | {1000 * f.seconds:.0f} ms | " + " | ".join(cells)
                  + f" | {ratio:.2f}x |")
    for t in threads:
        for name in animators:
            within = [n for n in streams if best[(t, name, n)] <= 2 * floors[name].seconds]
            print(f"\n{t} threads, {name}: " + (f"within twice the floor (bound by the weights) up to {max(within)} "
                                                f"streams of those measured" if within else "above twice the floor at "
                                                                                           "every batch measured"))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "preset": args.preset, "hop_ms": args.hop_ms, "device": str(device), "dtype": args.dtype,
            "cpu": cpu_description(), "read_bandwidth": read_bandwidth(device.type),
            "date": time.strftime("%Y-%m-%d"), **v,
            "floors": {n: {"weight_bytes": f.weight_bytes, "seconds": f.seconds} for n, f in floors.items()},
            "hops": [{"threads": t, "encoders": name, "streams": n, "seconds": s} for (t, name, n), s in best.items()],
        }, indent=1))


if __name__ == "__main__":
    main()
