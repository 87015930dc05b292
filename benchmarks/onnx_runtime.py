"""The exported graph in ONNX Runtime against the library in PyTorch, on this CPU: one clip of
the graph's length, both runs interleaved, the fastest of each, and how far their outputs are.

    emotalk-fast export-onnx --random-weights emotalk -o emotalk.onnx --seconds 4
    python benchmarks/onnx_runtime.py emotalk.onnx --random-weights emotalk
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
from emotalk_fast.tools.measure import versions  # noqa: E402
from emotalk_fast.export.onnx_export import FixedLengthGraph, example_inputs  # noqa: E402
from emotalk_fast.runtime.device import cpu_description  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", help="a graph written by emotalk-fast export-onnx")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="the checkpoint it was exported from")
    model.add_argument("--random-weights", help="the preset it was exported from (random weights, seed 0)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    animator = (Animator.from_pretrained(args.checkpoint, device="cpu") if args.checkpoint else
                Animator.from_config(args.random_weights, seed=0, device="cpu"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    n = int(session.get_modelmeta().custom_metadata_map["num_samples"])
    inputs = example_inputs(animator.model, n)
    feed = dict(zip(("wave", "level", "person"), (x.numpy() for x in inputs)))
    graph = FixedLengthGraph(animator.model).eval()
    times = {"PyTorch": [], "ONNX Runtime": []}
    with torch.inference_mode():
        for _ in range(args.repeats + 1):  # the first of each warms up
            t0 = time.perf_counter()
            want = graph(*inputs)
            times["PyTorch"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = session.run(None, feed)
            times["ONNX Runtime"].append(time.perf_counter() - t0)
    diff = float(np.abs(got[0] - want[0].numpy()).max())
    print(f"CPU {cpu_description()}, {args.threads} threads, torch {versions()['torch']}, onnxruntime "
          f"{ort.__version__}, {time.strftime('%Y-%m-%d')}; {n / 16000:g} s of audio, max abs difference {diff:.2g}\n")
    print("| runtime | fastest | median |")
    print("| --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {min(t[1:]):.2f} s | {np.median(t[1:]):.2f} s |")


if __name__ == "__main__":
    main()
