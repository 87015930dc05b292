"""Stream a 16 kHz wav file through a streaming EmoTalk export with ONNX Runtime alone, as a
game's host code would: numpy, soundfile and onnxruntime; no torch, no emotalk_fast.

    emotalk-fast export-onnx --streaming -o stream.onnx --random-weights mini
    python examples/onnx_stream.py stream.onnx speech.wav -o frames.npy

Writes the frames, float32 [T, 52] (T = ceil(N / 16000 * 30)), level 1 and person 0, at the
export's settings (its metadata). Audio arrives in chunks (`--chunk` samples, as from a
microphone); a hop runs as soon as its window's last sample has arrived, and the end of the
audio runs the rest. The whole host side is the arithmetic below: which samples a hop's window
holds, and the states carried from one hop to the next.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np


class OnnxStream:
    """One stream over a streaming export: push(samples) -> the frames that became final;
    flush() -> the rest."""

    def __init__(self, session, level: int = 1, person: int = 0):
        self.session = session
        meta = session.get_modelmeta().custom_metadata_map
        self.rate, self.fps = int(meta["sample_rate"]), int(meta["fps"])
        self.hop, self.lookahead = int(meta["hop_frames"]), int(meta["lookahead_frames"])
        self.context = int(meta["context_frames"])
        # with a ramp, hops of 3, 6, 12, ... frames (100, 200, 400 ms) come first, doubling up to the hop
        self.ramp_hops = sum(1 for i in range(32) if 3 << i < self.hop) if json.loads(meta["ramp"]) else 0
        self.stride, self.field = int(meta["cnn_stride"]), int(meta["cnn_field"])
        self.level = np.zeros((1, int(meta["num_levels"])), np.float32)
        self.person = np.zeros((1, int(meta["num_persons"])), np.float32)
        self.level[0, level], self.person[0, person] = 1.0, 1.0
        self.states = {name: np.zeros(shape, np.float32) for name, shape in json.loads(meta["state_shapes"]).items()}
        self.output_names = [o.name for o in session.get_outputs()]
        self.emotion_logits = None
        self.audio = np.zeros(0, np.float32)  # every sample so far (a game would keep only the last window)
        self.next_hop = 0

    def cnn_frame(self, t: int) -> int:
        """The 50 Hz CNN frame at or before output frame t (position 5t/3)."""
        return 5 * t // 3

    def start(self, k: int) -> int:
        """The first frame of hop k."""
        ramp = min(k, self.ramp_hops)
        return 3 * ((1 << ramp) - 1) + (k - ramp) * self.hop

    def window(self, k: int, total_frames=None, total_samples=None):
        """Hop k's frames [h0, h1), its new rows' end t1, and its window's CNN frames, clipped to
        the clip's totals at the end."""
        h0, h1 = self.start(k), self.start(k + 1)
        t0, t1 = max(0, h0 - self.context), h1 + self.lookahead
        if total_frames is not None:
            h1, t1 = min(h1, total_frames), min(t1, total_frames)
        c_lo, c_hi = self.cnn_frame(t0), -(-5 * (t1 - 1) // 3)
        if total_samples is not None:
            last = (total_samples - self.field) // self.stride  # the clip's last CNN frame
            c_lo, c_hi = min(c_lo, last), min(c_hi, last)
        return h0, h1, t1, c_lo, c_hi

    def run(self, k: int, totals=(None, None)) -> np.ndarray:
        h0, h1, t1, c_lo, c_hi = self.window(k, *totals)
        window = self.audio[self.stride * c_lo : self.stride * c_hi + self.field]
        first = min(self.cnn_frame(h0), c_hi)  # the first new row's CNN frame
        inputs = {"window": window[None], "segment": window[None, self.stride * (first - c_lo):],
                  "first_cnn_frame": np.array(first, np.int64), "new_frames": np.arange(h0, t1, dtype=np.int64),
                  "hop_frames": np.arange(h0, h1, dtype=np.int64), "kept": np.array(h0, np.int64),
                  "level": self.level, "person": self.person, **self.states}
        outputs = dict(zip(self.output_names, self.session.run(None, inputs)))
        self.states = {name: outputs[f"next_{name}"] for name in self.states}
        self.emotion_logits = outputs["emotion_logits"]  # the label so far, over the metadata's emotion_labels
        self.next_hop = k + 1
        return outputs["blendshapes"]

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, np.float32)
        if samples.ndim != 1 or not np.isfinite(samples).all():
            raise ValueError("push mono float samples, every one finite")
        self.audio = np.concatenate([self.audio, samples])
        out = [np.zeros((0, 52), np.float32)]
        while True:
            h0, h1, t1, c_lo, c_hi = self.window(self.next_hop)
            if self.stride * c_hi + self.field > len(self.audio):  # its window is not all here yet
                return np.concatenate(out)
            out.append(self.run(self.next_hop))

    def flush(self) -> np.ndarray:
        n = len(self.audio)
        if n < self.field:
            raise ValueError(f"{n} samples: too short to animate (at least {self.field})")
        total = math.ceil(n / self.rate * self.fps)
        out = [np.zeros((0, 52), np.float32)]
        while self.start(self.next_hop) < total:
            out.append(self.run(self.next_hop, (total, n)))
        return np.concatenate(out)


def stream_file(session, samples: np.ndarray, chunk: int) -> np.ndarray:
    """The frames of 16 kHz mono samples pushed `chunk` samples at a time, then flushed."""
    stream = OnnxStream(session)
    frames = [stream.push(samples[i : i + chunk]) for i in range(0, len(samples), chunk)]
    return np.concatenate(frames + [stream.flush()])


def main() -> None:
    import onnxruntime
    import soundfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the streaming export (.onnx)")
    p.add_argument("input", help="16 kHz wav file (stereo is averaged)")
    p.add_argument("-o", "--output", required=True, help="frames as .npy, float32 [T, 52]")
    p.add_argument("--chunk", type=int, default=1600, help="samples per push (default 1600: 100 ms)")
    args = p.parse_args()
    samples, rate = soundfile.read(args.input, dtype="float32", always_2d=True)
    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    if rate != int(session.get_modelmeta().custom_metadata_map["sample_rate"]):
        raise SystemExit(f"{args.input} is {rate} Hz: this loop takes 16000 Hz (resample it first)")
    try:
        frames = stream_file(session, samples.mean(1), args.chunk)
    except ValueError as e:
        raise SystemExit(f"{args.input}: {e}")
    np.save(args.output, frames.astype(np.float32))
    print(f"wrote {args.output}: {len(frames)} frames")


if __name__ == "__main__":
    main()
