"""A small synthetic training set in the 3D-ETF layout, for smoke tests and CI.

espeak-ng speaks the two RAVDESS statements; a voice stands in for each actor (person) and
speed/pitch settings stand in for emotions and their intensity. Targets are derived from the
audio so a model can learn them: jawOpen and the lower-lip channels follow the RMS envelope,
mouthFunnel/Pucker the zero-crossing rate (a crude brightness/pitch cue), brows the envelope plus
the pitch setting, and each emotion adds its own offsets (smile for happy, frown for sad, brow
down and sneer for angry) scaled by the level; every other channel stays at 0.01.

    python -m emotalk_fast.training.smoke_data OUT_DIR [--persons 2]

Needs the `espeak-ng` program. Output: `<stem>.wav` (16 kHz mono PCM16) + `<stem>.npy`
[ceil(N / 16000 * 30), 52] float32, RAVDESS stems `03-01-EE-II-SS-01-AA`, and optionally
unlabelled clips `unlabelled_<k>` (HDTF-like names) for self-reconstruction.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from emotalk_fast.io.audio import espeak_program, espeak_speech
from emotalk_fast.model.config import BLENDSHAPE_NAMES, FPS, SAMPLE_RATE
from emotalk_fast.errors import InvalidInput, UserError
from emotalk_fast.model.emotalk import num_frames

SENTENCES = ("Kids are talking by the door", "Dogs are sitting by the door")
VOICES = ("en-us", "en-gb+f3", "en-us+m3", "en-gb-x-rp+f2")  # actor 1, 2, ...
# RAVDESS emotion code -> (speed words/min, pitch 0..99) at the normal level; the strong level
# moves both 1.6x further from neutral.
EMOTION_VOICE = {1: (160, 45), 3: (185, 70), 4: (125, 30), 5: (200, 55), 8: (170, 85)}
_NEUTRAL = EMOTION_VOICE[1]
# RAVDESS emotion code -> {channel: offset at the normal level}; the strong level doubles it.
EMOTION_FACE = {
    1: {},
    3: {"mouthSmileLeft": 0.35, "mouthSmileRight": 0.35, "cheekSquintLeft": 0.2, "cheekSquintRight": 0.2},
    4: {"mouthFrownLeft": 0.3, "mouthFrownRight": 0.3, "browInnerUp": 0.25},
    5: {"browDownLeft": 0.4, "browDownRight": 0.4, "noseSneerLeft": 0.25, "noseSneerRight": 0.25},
    8: {"eyeWideLeft": 0.4, "eyeWideRight": 0.4, "browInnerUp": 0.3, "jawOpen": 0.1},
}
_CH = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}


def frame_features(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 30 fps frame: RMS envelope scaled to [0, 1] and zero-crossing rate in [0, 1]."""
    T, hop = num_frames(len(wave)), SAMPLE_RATE / FPS
    rms, zcr = np.zeros(T), np.zeros(T)
    for t in range(T):
        a, b = int(t * hop), min(int((t + 1) * hop) + 1, len(wave))
        w = wave[a:b]
        if len(w) > 1:
            rms[t] = np.sqrt(np.mean(w.astype(np.float64) ** 2))
            zcr[t] = np.mean(np.abs(np.diff(np.sign(w))) > 0)
    rms = np.convolve(rms, np.ones(3) / 3, mode="same")
    return rms / max(rms.max(), 1e-6), zcr


def make_targets(wave: np.ndarray, emotion: int, level: int, pitch: int) -> np.ndarray:
    env, zcr = frame_features(wave)
    y = np.full((len(env), len(BLENDSHAPE_NAMES)), 0.01, dtype=np.float64)
    for name, gain in (("jawOpen", 0.6), ("mouthLowerDownLeft", 0.3), ("mouthLowerDownRight", 0.3),
                       ("mouthStretchLeft", 0.1), ("mouthStretchRight", 0.1)):
        y[:, _CH[name]] = gain * env
    y[:, _CH["mouthClose"]] = 0.2 * (1 - env)
    y[:, _CH["mouthFunnel"]] = 0.4 * zcr * env
    y[:, _CH["mouthPucker"]] = 0.3 * (1 - zcr) * env
    brow = 0.1 * env + 0.2 * pitch / 99
    for name in ("browInnerUp", "browOuterUpLeft", "browOuterUpRight"):
        y[:, _CH[name]] = brow
    for name, off in EMOTION_FACE[emotion].items():
        y[:, _CH[name]] += off * (2 if level else 1)
    return np.clip(y, 0, 1).astype(np.float32)


def ravdess_stem(emotion: int, level: int, sentence: int, actor: int) -> str:
    return f"03-01-{emotion:02d}-{level + 1:02d}-{sentence + 1:02d}-01-{actor:02d}"


def generate(out_dir: str | Path, persons: int = 2, emotions: tuple[int, ...] = (1, 3, 4, 5),
             levels: tuple[int, ...] = (0, 1), sentences: int = 2, unlabelled: int = 0) -> list[Path]:
    """Write the clips; returns the .wav paths. RAVDESS has no strong neutral, so neither does this."""
    import soundfile as sf

    if not 1 <= persons <= len(VOICES) or not 1 <= sentences <= len(SENTENCES):
        raise InvalidInput(f"persons must be 1..{len(VOICES)} and sentences 1..{len(SENTENCES)}")
    espeak_program()  # before any folder is made: without it, says how to install it
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for actor in range(1, persons + 1):
        for emotion in emotions:
            for level in (0,) if emotion == 1 else levels:
                for s in range(sentences):
                    jobs.append((ravdess_stem(emotion, level, s, actor), VOICES[actor - 1], emotion, level, s))
    for k in range(unlabelled):
        jobs.append((f"unlabelled_{k}", VOICES[k % len(VOICES)], 1, 0, k % sentences))
    paths = []
    for stem, voice, emotion, level, s in jobs:
        speed, pitch = EMOTION_VOICE[emotion]
        gain = 1.6 if level else 1.0
        speed = int(round(_NEUTRAL[0] + gain * (speed - _NEUTRAL[0])))
        pitch = int(np.clip(round(_NEUTRAL[1] + gain * (pitch - _NEUTRAL[1])), 0, 99))
        wave = espeak_speech(SENTENCES[s], voice, speed, pitch)
        sf.write(str(out / f"{stem}.wav"), wave, SAMPLE_RATE, subtype="PCM_16")
        wave16 = sf.read(str(out / f"{stem}.wav"), dtype="float32")[0]  # targets from what is stored
        np.save(out / f"{stem}.npy", make_targets(wave16, emotion, level, pitch))
        paths.append(out / f"{stem}.wav")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output")
    p.add_argument("--persons", type=int, default=2)
    p.add_argument("--unlabelled", type=int, default=0)
    args = p.parse_args(argv)
    try:
        paths = generate(args.output, persons=args.persons, unlabelled=args.unlabelled)
    except UserError as e:
        print(f"smoke_data: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} clips to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
