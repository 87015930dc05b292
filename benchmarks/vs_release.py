"""emotalk_fast against the released EmoTalk code itself, side by side on this CPU.

    EMOTALK_RELEASE_DIR=/path/to/release EMOTALK_RELEASE_PYTHON=/path/to/venv/bin/python \\
        python benchmarks/vs_release.py --seconds 21.4 --rounds 3

EMOTALK_RELEASE_DIR holds the release's model.py, wav2vec.py and utils.py (from
psyai-net/EmoTalk_release, unchanged); EMOTALK_RELEASE_PYTHON is a Python with its pins
(transformers 4.26.1, numpy < 2) and torch. Without them this prints how to set them up and
exits 0: nothing here, and nothing in CI, needs the release.

Both sides get the same release-size weights (the oracle rule, written once as a release .pth),
the same speech (espeak-ng), and run in their own processes; runs are interleaved (release,
ours float32, ours bfloat16, release, ...) at torch's default threads and at one thread, so a
noisy machine hits every side alike. Printed: medians and ratios, each side's GFLOP/s (the
model's FLOPs for the clip over its time) next to GEMM rates measured in the same run, start-up
(process start -> first frame, imports included), each process's peak resident set, and how
far our outputs are from the release's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from emotalk_fast.model.config import EmoTalkConfig, EncoderConfig  # noqa: E402
from emotalk_fast.tools.measure import device_name, generated_speech  # noqa: E402

# the release loads its .pth; ours its converted directory in the dtype it runs (`convert --dtype`)
SIDES = ("release", "fast-float32", "fast-bfloat16")
PAUSE_S = 1.0  # between runs of different processes


def encoder_flops(enc: EncoderConfig, num_samples: int, frames: int) -> float:
    """Multiply-adds x 2 of one wav2vec2 encoder over a clip: the CNN at 50 Hz, then projection,
    positional convolution and transformer layers (attention scores and values included) at the
    `frames` EmoTalk resamples to (30 fps)."""
    flops, length, channels = 0.0, num_samples, 1
    for dim, k, s in zip(enc.conv_dim, enc.conv_kernel, enc.conv_stride):
        length = (length - k) // s + 1
        flops += 2.0 * length * dim * channels * k
        channels = dim
    t, h = frames, enc.hidden_size
    flops += 2.0 * t * channels * h  # feature projection
    flops += 2.0 * t * h * (h // enc.num_pos_conv_groups) * enc.num_pos_conv_taps
    per_layer = 2.0 * t * h * h * 4 + 2.0 * t * h * enc.intermediate_size * 2 + 2.0 * 2 * t * t * h
    return flops + enc.num_layers * per_layer


def model_flops(cfg: EmoTalkConfig, num_samples: int) -> float:
    from emotalk_fast.model.emotalk import num_emotion_frames, num_frames

    content = encoder_flops(cfg.content, num_samples, num_frames(num_samples))
    emotion = encoder_flops(cfg.emotion, num_samples, num_emotion_frames(cfg.emotion.num_cnn_frames(num_samples)))
    return content + emotion


class Worker:
    def __init__(self, python: str, role: str, *args, env=None):
        self.role = role
        self.proc = subprocess.Popen([python, str(HERE / "vs_release_worker.py"), role, *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.startup_s = self._reply()["startup_s"]

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.role} worker stopped (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(60)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=21.4, help="length of the speech")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per thread setting")
    p.add_argument("--threads", default="default,1", help="thread settings: default (torch's) and/or numbers")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    release_dir, release_python = os.environ.get("EMOTALK_RELEASE_DIR"), os.environ.get("EMOTALK_RELEASE_PYTHON")
    if not release_dir or not release_python:
        print("skipped: set EMOTALK_RELEASE_DIR (the release's model.py, wav2vec.py, utils.py) and "
              "EMOTALK_RELEASE_PYTHON (a Python with torch, transformers==4.26.1, numpy<2, scipy, soundfile)")
        return 0

    import soundfile
    import torch

    from emotalk_fast.model.checkpoint import random_release_state_dict

    cfg = EmoTalkConfig.from_name("emotalk")
    default_threads = torch.get_num_threads()
    thread_settings = [default_threads if t == "default" else int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("writing the release-size checkpoint and the speech ...", file=sys.stderr, flush=True)
        torch.save(random_release_state_dict(cfg, seed=1), tmp / "EmoTalk.pth")
        for dtype in ("float32", "bfloat16"):  # ours loads its converted directory, as the README says
            subprocess.run([sys.executable, "-m", "emotalk_fast", "convert", str(tmp / "EmoTalk.pth"),
                            str(tmp / dtype), "--dtype", dtype], check=True, capture_output=True)
        speech = generated_speech(args.seconds)
        soundfile.write(tmp / "speech.wav", speech, 16000, subtype="FLOAT")
        gemm = json.loads(subprocess.run([sys.executable, str(HERE / "vs_release_worker.py"), "gemm",
                                          ",".join(map(str, thread_settings))],
                                         capture_output=True, text=True, check=True).stdout)
        workers = {}
        try:
            # start-up and memory from the release .pth itself, on its own (not kept)
            from_pth = Worker(sys.executable, "fast-float32", tmp / "EmoTalk.pth", tmp / "speech.wav")
            pth_startup, pth_rss = from_pth.startup_s, from_pth.ask(cmd="rss")["peak_rss_mb"]
            from_pth.close()
            for side in SIDES:  # one at a time: start-up measured on a quiet machine
                print(f"starting {side} ...", file=sys.stderr, flush=True)
                python = release_python if side == "release" else sys.executable
                checkpoint = tmp / "EmoTalk.pth" if side == "release" else tmp / side.split("-")[1]
                workers[side] = Worker(python, side, checkpoint, tmp / "speech.wav",
                                       env={"EMOTALK_RELEASE_DIR": release_dir})
            outputs = {}
            for side, w in workers.items():
                w.ask(cmd="save", path=str(tmp / f"{side}.npy"))
                outputs[side] = np.load(tmp / f"{side}.npy")
            times = {}
            for threads in thread_settings:
                for w in workers.values():
                    w.ask(cmd="threads", n=threads)
                    w.ask(cmd="run")  # warm-up at this thread count
                for r in range(args.rounds):
                    for side, w in workers.items():
                        # the previous run's OpenMP threads spin on for a while after it ends (libgomp's
                        # default wait policy) and would steal cores from this one: let them settle
                        time.sleep(PAUSE_S)
                        times.setdefault((threads, side), []).append(w.ask(cmd="run")["seconds"])
                    print(f"threads {threads}, round {r + 1}/{args.rounds}: " + ", ".join(
                        f"{s} {times[(threads, s)][-1]:.2f} s" for s in SIDES), file=sys.stderr, flush=True)
            rss = {side: w.ask(cmd="rss")["peak_rss_mb"] for side, w in workers.items()}
            startup = {side: w.startup_s for side, w in workers.items()}
            rss["fast-float32 from the .pth"], startup["fast-float32 from the .pth"] = pth_rss, pth_startup
        finally:
            for w in workers.values():
                w.close()

    flops = model_flops(cfg, len(speech))
    result = {"cpu": device_name(torch.device("cpu")), "torch": torch.__version__, "audio_s": args.seconds,
              "model_gflop": flops / 1e9, "gemm_gflops": gemm, "startup_s": startup, "peak_rss_mb": rss,
              "median_s": {f"{s}@{t}": float(np.median(v)) for (t, s), v in times.items()},
              "max_abs_vs_release": {s: float(np.abs(outputs[s] - outputs["release"]).max()) for s in SIDES[1:]}}
    print(report(result, thread_settings))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def report(r: dict, thread_settings) -> str:
    lines = [f"{r['cpu']}; torch {r['torch']}; {r['audio_s']:g} s of espeak-ng speech; release-size weights "
             f"(random, the oracle rule); the model does {r['model_gflop']:.0f} GFLOP for this clip", "",
             "| threads | side | median | vs release | achieved GFLOP/s | GEMM rate (same run) |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for t in thread_settings:
        base = r["median_s"][f"release@{t}"]
        for side in SIDES:
            m = r["median_s"][f"{side}@{t}"]
            dtype = "bfloat16" if side.endswith("bfloat16") else "float32"
            lines.append(f"| {t} | {side} | {m:.2f} s | {base / m:.2f}x | {r['model_gflop'] / m:.0f} "
                         f"| {r['gemm_gflops'][f'{dtype}@{t}']:.0f} ({dtype}) |")
    lines += ["", "| side | start-up (process start -> first frame) | vs release | peak resident set | vs release |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for side in r["startup_s"]:
        lines.append(f"| {side} | {r['startup_s'][side]:.2f} s | {r['startup_s']['release'] / r['startup_s'][side]:.1f}x "
                     f"| {r['peak_rss_mb'][side]:.0f} MB | {100 * r['peak_rss_mb'][side] / r['peak_rss_mb']['release']:.0f} % |")
    lines.append("")
    lines.append("max |ours - release| over the blendshapes: " + ", ".join(
        f"{s} {v:.2e}" for s, v in r["max_abs_vs_release"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
