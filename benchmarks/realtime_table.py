"""What holds real time on this machine: for each model size and precision, the live streams a
steady hop keeps up with at each hop length, and the latency (emotalk_fast.streaming.budget: a steady
batched hop timed at 1 and up to 4 streams, 80 % of the hop allowed).

    python benchmarks/realtime_table.py
    python benchmarks/realtime_table.py --presets mini,emotalk --dtypes float32,auto --hops 100,400,1600
    python benchmarks/realtime_table.py --presets emotalk --dtypes float32 --encodings windowed,incremental
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalk_fast import Animator  # noqa: E402
from emotalk_fast.streaming import budget  # noqa: E402
from emotalk_fast.streaming.settings import StreamSettings  # noqa: E402
from emotalk_fast.tools.measure import versions  # noqa: E402
from emotalk_fast.runtime.device import cpu_description  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="mini,tiny,emotalk")
    p.add_argument("--dtypes", default="float32,auto", help="float32, auto, bfloat16, int8 (float32 with int8 "
                                                            "encoder layers), onnx (a stream's incremental encoders "
                                                            "in ONNX Runtime) or openvino (float32 encoders compiled "
                                                            "by OpenVINO), comma-separated")
    p.add_argument("--hops", default="100,200,400,800,1600")
    p.add_argument("--context-ms", type=int, default=2000)
    p.add_argument("--lookahead-ms", type=int, default=200)
    p.add_argument("--streams", type=int, default=16, help="the extrapolation's far end, as serve's --max-streams")
    p.add_argument("--emotion", default="own,content",
                   help="the emotion branch: own (its default window and cadence), content (the content's "
                        "windows, every hop), or both, compared side by side")
    p.add_argument("--encodings", default="windowed",
                   help="windowed, incremental (each hop encodes only its new rows), or both side by side")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's, one per core)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    emotion_settings = {"own": {}, "content": {"emotion_context_ms": args.context_ms}}
    encodings = args.encodings.split(",")
    print(f"CPU {cpu_description()}, {torch.get_num_threads()} torch threads, torch {versions()['torch']}, "
          f"{time.strftime('%Y-%m-%d')}; context {args.context_ms} ms, lookahead {args.lookahead_ms} ms\n")
    print("| model | precision | hop | encoding | emotion branch | a hop, 1 stream (peak) | live streams held | "
          "latency (1 stream) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for preset in args.presets.split(","):
        for dtype in args.dtypes.split(","):
            encoders = dtype if dtype in ("int8", "openvino", "onnx") else "torch"  # float32 encoders, run otherwise
            animator = Animator.from_config(preset, seed=0, device="cpu", dtype=None if encoders != "torch" else dtype,
                                            encoders=encoders)
            name = f"{encoders} encoders" if encoders != "torch" else str(animator.dtype).replace("torch.", "") + \
                (" (auto)" if dtype == "auto" else "")
            for hop in (int(h) for h in args.hops.split(",")):
                shown = set()
                rows = [(e, emotion) for e in encodings for emotion in args.emotion.split(",")]
                for encoding, emotion in rows:  # interleaved: side by side in one run
                    settings = dict(emotion_settings[emotion])
                    if emotion == "content" and encoding == "windowed":
                        settings["emotion_hop_ms"] = hop
                    resolved = StreamSettings(hop_ms=hop, lookahead_ms=args.lookahead_ms, context_ms=args.context_ms,
                                              encoding=encoding, **settings)
                    key = (encoding, resolved.emotion_context, resolved.emotion_hop)
                    if key in shown:  # the default is the content's windows at this hop: one row
                        continue
                    shown.add(key)
                    b = budget.measure(animator.model, animator.device, animator.dtype, resolved, args.streams,
                                       animator.encoder_backend)
                    held = b.holds()
                    latency = f"{b.latency_ms(1):.0f} ms" if held else "-"
                    branch = (f"{resolved.emotion_context} ms, every {resolved.emotion_hop} ms"
                              if resolved.separate_emotion else "every hop, its own kept context"
                              if encoding == "incremental" else "the content's windows")
                    cost = f"{1000 * b.seconds(1):.0f} ms"
                    if b.peak_s != b.hop_s:
                        cost += f" ({1000 * b.seconds(1, peak=True):.0f} ms)"
                    print(f"| {preset} | {name} | {hop} ms | {encoding} | {branch} | {cost} | {held} | {latency} |",
                          flush=True)
            del animator


if __name__ == "__main__":
    main()
