"""What int8 encoder layers (`encoders="int8"`) change: offline animation of each clip with
int8 encoders against float32, as the curves' mean abs deviation over the float32 curves' own
spread around their mean, and whether the emotion label stays; and live, a stream with int8
encoders against the float32 stream, beside the float32 stream's own deviation from offline
(the tolerance: at most 0.25 of it); a trained model and random weights side by side.

    python -m emotalk_fast.training.smoke_data smoke
    emotalk-fast train smoke runs/tiny --preset tiny --steps 800 --batch-size 2 --lr 1e-3 --dropout 0
    python benchmarks/int8_quality.py --checkpoint runs/tiny --data smoke
    python benchmarks/int8_quality.py --random-weights emotalk --data smoke --clips 4
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalk_fast import Animator  # noqa: E402
from emotalk_fast.io.audio import prepare_audio  # noqa: E402
from emotalk_fast.runtime.int8 import weight_levels  # noqa: E402
from emotalk_fast.tools.measure import versions  # noqa: E402
from emotalk_fast.runtime.device import cpu_description  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint")
    model.add_argument("--random-weights", help="a preset with random weights (seed 0)")
    p.add_argument("--data", required=True, help="a folder of .wav clips (the smoke set)")
    p.add_argument("--clips", type=int, default=None, help="only the first N clips")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hop-ms", type=int, default=100, help="the streams' hop (the other settings: the defaults)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    def load(int8: bool) -> Animator:
        if args.checkpoint:
            return Animator.from_pretrained(args.checkpoint, device="cpu", encoders="int8" if int8 else "torch")
        return Animator.from_config(args.random_weights, seed=0, device="cpu", encoders="int8" if int8 else "torch")

    reference, int8 = load(False), load(True)
    clips = sorted(Path(args.data).glob("*.wav"))[: args.clips]
    if not clips:
        raise SystemExit(f"no .wav clips in {args.data}")
    deviations, agree, seconds = [], 0, {"float32": 0.0, "int8 encoders": 0.0}
    live, stream_off = [], []  # int8 stream from float32 stream; float32 stream from offline (over the spread)
    for clip in clips:
        x = prepare_audio(clip, min_samples=reference.min_samples)
        t0 = time.perf_counter()
        want = reference.animate(x, long_audio_s=None)
        t1 = time.perf_counter()
        got = int8.animate(x, long_audio_s=None)
        seconds["float32"] += t1 - t0
        seconds["int8 encoders"] += time.perf_counter() - t1
        spread = float(np.abs(want.blendshapes - want.blendshapes.mean(0)).mean())
        deviations.append(float(np.abs(got.blendshapes - want.blendshapes).mean()) / spread)
        agree += int(np.argmax(got.emotion_logits) == np.argmax(want.emotion_logits))
        s32, s8 = stream(reference, x, args.hop_ms), stream(int8, x, args.hop_ms)
        n = min(len(s32), len(s8), len(want.blendshapes))
        live.append(float(np.abs(s8[:n] - s32[:n]).mean()) / spread)
        stream_off.append(float(np.abs(s32[:n] - want.blendshapes[:n]).mean()) / spread)
    print(f"{args.checkpoint or 'random weights ' + args.random_weights}, {len(clips)} clips; CPU {cpu_description()}, "
          f"{args.threads} threads, torch {versions()['torch']}, int8 weights within +-{weight_levels()}, "
          f"streams at {args.hop_ms} ms hops, {time.strftime('%Y-%m-%d')}\n")
    print("| model | deviation / spread (mean, max over clips) | emotion label kept | offline compute, float32 / int8 "
          "| int8 stream from float32 stream | float32 stream from offline | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.checkpoint or args.random_weights} | {np.mean(deviations):.3f}, {np.max(deviations):.3f} | "
          f"{agree} of {len(clips)} | {seconds['float32']:.2f} s / {seconds['int8 encoders']:.2f} s | "
          f"{np.mean(live):.3f} | {np.mean(stream_off):.3f} | {np.mean(live) / np.mean(stream_off):.3f} |")


def stream(animator: Animator, x: np.ndarray, hop_ms: int) -> np.ndarray:
    """The clip through a stream at the default settings but the hop, pushed 100 ms at a time."""
    s = animator.stream(hop_ms=hop_ms)
    return np.concatenate([s.push(x[i : i + 1600]) for i in range(0, len(x), 1600)] + [s.flush()])

if __name__ == "__main__":
    main()
