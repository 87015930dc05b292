"""Training data: clips of 16 kHz speech (`.wav`) with 30 fps ARKit targets (`.npy` [T, 52]),
their labels, and EmoTalk's pseudo training pairs.

Layout (3D-ETF): one `<stem>.wav` and one `<stem>.npy` per clip, side by side, anywhere under
the data root. A RAVDESS stem `modality-channel-emotion-intensity-statement-repetition-actor`
(`03-01-05-02-01-01-12`) gives the labels; other stems (HDTF, ...) are unlabelled and serve
self-reconstruction only.

Pseudo pair (the released training forward, see `EmoTalkReference.forward`). For one person
and one emotion level, with sentences s1 != s2 and emotions e1 != e2:

    input12  = audio of (s1, e2)       content c1, emotion e2: the anchor clip
    target12 = targets of (s1, e2)     self reconstruction of input12
    input21  = audio of (s2, e1)       supplies emotion e1 (and the classifier label e1)
    target11 = targets of (s1, e1)     cross reconstruction: content of input12 + emotion of input21

The released forward runs in this one direction only, so the fourth clip (s2, e2) of a full
2 x 2 square is not needed. All three clips share the person and the level, because the
forward takes one level and one person for both reconstructions. Emotions are told apart by
their dataset emotion (RAVDESS code), not by the classifier label, so calm/neutral pairs count.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from emotalk_fast.io.audio import prepare_audio, resampled_length
from emotalk_fast.model.config import DEFAULT_EMOTION_LABELS, FPS, SAMPLE_RATE
from emotalk_fast.errors import InvalidInput
from emotalk_fast.model.emotalk import num_frames

from .config import DEFAULT_EMOTION_MAP

log = logging.getLogger("emotalk_fast.training")

NUM_BLENDSHAPES = 52

# RAVDESS emotion codes (the third field of a file name).
RAVDESS_EMOTIONS: dict[int, str] = {
    1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fearful", 7: "disgust", 8: "surprised",
}

# RAVDESS emotion -> classifier label (emotalk_fast.model.config.DEFAULT_EMOTION_LABELS). The
# classifier has no 'calm'; it is closest to 'neutral'. Pass another table to change that.

_RAVDESS_STEM = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


@dataclass(frozen=True)
class ClipLabels:
    emotion: str  # dataset emotion name (RAVDESS: 'neutral', 'calm', ...)
    level: int  # emotion level index: RAVDESS intensity 01 -> 0 (normal), 02 -> 1 (strong)
    sentence: int  # content index: RAVDESS statement 01 -> 0, 02 -> 1
    person: int  # speaking-style index: RAVDESS actor 1..24 -> 0..23


def parse_ravdess_name(stem: str) -> ClipLabels | None:
    """Labels of a RAVDESS file stem, or None when the stem is not a RAVDESS name."""
    m = _RAVDESS_STEM.match(stem)
    if m is None:
        return None
    _, _, emotion, intensity, statement, _, actor = (int(g) for g in m.groups())
    if emotion not in RAVDESS_EMOTIONS or intensity not in (1, 2) or statement not in (1, 2) \
            or not 1 <= actor <= 24:
        raise InvalidInput(f"{stem!r} looks like a RAVDESS name but has out-of-range fields "
                           f"(emotion 01..08, intensity 01..02, statement 01..02, actor 01..24)")
    return ClipLabels(RAVDESS_EMOTIONS[emotion], intensity - 1, statement - 1, actor - 1)


def emotion_classes(emotion_map: Mapping[str, str] | None = None,
                    labels: tuple[str, ...] = DEFAULT_EMOTION_LABELS) -> dict[str, int]:
    """Dataset emotion name -> classifier index, checked against the classifier's labels."""
    emotion_map = DEFAULT_EMOTION_MAP if emotion_map is None else emotion_map
    bad = {k: v for k, v in emotion_map.items() if v not in labels}
    if bad:
        raise InvalidInput(f"emotion map targets {bad} are not classifier labels {list(labels)}")
    return {k: labels.index(v) for k, v in emotion_map.items()}


@dataclass(frozen=True)
class Clip:
    stem: str
    wav: Path
    npy: Path
    num_samples: int  # 16 kHz samples used (after at most max_crop_frames of cropping)
    num_frames: int  # target frames used; equals ceil(num_samples / 16000 * 30)
    labels: ClipLabels | None  # None: self-reconstruction only
    emotion_class: int  # classifier index, -1 when unlabelled or unmapped


def _samples_for_frames(frames: int) -> int:
    """Most samples whose frame count ceil(n / 16000 * 30) is `frames`."""
    n = math.floor(frames * SAMPLE_RATE / FPS)
    while num_frames(n) > frames:
        n -= 1
    return n


def _audio_length(path: Path) -> int:
    import soundfile as sf

    info = sf.info(str(path))
    return resampled_length(info.frames, info.samplerate, SAMPLE_RATE)


def load_audio(path: Path, num_samples: int | None = None) -> np.ndarray:
    """Mono float32 at 16 kHz, exactly as `Animator.animate` reads the file (emotalk_fast.io.audio:
    channels mixed and resampled in float64), cut to `num_samples`."""
    return np.ascontiguousarray(prepare_audio(path)[:num_samples])


def crop_audio(wave: np.ndarray, start: int, frames: int) -> np.ndarray:
    """The samples of 30 fps frames [start, start + frames): exactly `frames` frames long."""
    if start == 0 and num_frames(len(wave)) == frames:
        return wave
    first = math.floor(start * SAMPLE_RATE / FPS)
    n = min(_samples_for_frames(frames), len(wave) - first)
    if num_frames(n) != frames:
        raise InvalidInput(f"frames [{start}, {start + frames}) do not fit {len(wave)} samples")
    return np.ascontiguousarray(wave[first:first + n])


def scan_clips(root: str | Path, emotion_map: Mapping[str, str] | None = None,
               labels: tuple[str, ...] = DEFAULT_EMOTION_LABELS, max_crop_frames: int = 1,
               on_mismatch: str = "error") -> list[Clip]:
    """Find every `<stem>.wav` + `<stem>.npy` pair under `root`, check lengths, read labels.

    The target must have T = ceil(N / 16000 * 30) frames for N audio samples. A difference of
    up to `max_crop_frames` is cropped off the longer side and reported; a larger one raises
    (`on_mismatch="error"`) or drops the clip with a report (`"skip"`). Nothing is cropped
    silently.
    """
    if on_mismatch not in ("error", "skip"):
        raise InvalidInput(f"on_mismatch must be 'error' or 'skip', got {on_mismatch!r}")
    root = Path(root)
    if not root.is_dir():
        raise InvalidInput(f"data directory not found: {root}")
    classes = emotion_classes(emotion_map, labels)
    wavs = sorted(root.rglob("*.wav"))
    npys = {p.with_suffix("") for p in root.rglob("*.npy")}
    no_target = [w for w in wavs if w.with_suffix("") not in npys]
    no_audio = sorted(npys - {w.with_suffix("") for w in wavs})
    if no_target or no_audio:
        log.warning("%s: %d .wav without .npy and %d .npy without .wav ignored (e.g. %s)", root,
                    len(no_target), len(no_audio), (no_target or no_audio)[0].name)
    clips, cropped, too_long = [], [], []
    for wav in wavs:
        if wav in no_target:
            continue
        npy = wav.with_suffix(".npy")
        shape = np.load(npy, mmap_mode="r").shape
        if len(shape) != 2 or shape[1] != NUM_BLENDSHAPES:
            raise InvalidInput(f"{npy}: targets must be [T, {NUM_BLENDSHAPES}], got {list(shape)}")
        n = _audio_length(wav)
        t_audio, t_target = num_frames(n), shape[0]
        if t_audio != t_target:
            if abs(t_audio - t_target) > max_crop_frames:
                too_long.append(f"{wav.stem} (audio {t_audio} frames, target {t_target})")
                continue
            cropped.append(wav.stem)
        t = min(t_audio, t_target)
        if t < 2:
            too_long.append(f"{wav.stem} (only {t} frame)")
            continue
        n = n if t == t_audio else _samples_for_frames(t)
        lab = parse_ravdess_name(wav.stem)
        clips.append(Clip(wav.stem, wav, npy, n, t, lab, classes.get(lab.emotion, -1) if lab else -1))
    if cropped:
        log.warning("%d of %d clips differ from their targets by <= %d frame(s); cropped to the "
                    "shorter (e.g. %s)", len(cropped), len(wavs), max_crop_frames, cropped[0])
    if too_long:
        msg = (f"{len(too_long)} clips have audio/target lengths more than {max_crop_frames} "
               f"frame(s) apart or are shorter than 2 frames: " + ", ".join(too_long[:5])
               + (" ..." if len(too_long) > 5 else ""))
        if on_mismatch == "error":
            raise InvalidInput(msg + " (on_mismatch='skip' drops them)")
        log.warning("skipped %s", msg)
    if not clips:
        raise InvalidInput(f"no usable .wav + .npy clips under {root}")
    unlabelled = sum(c.labels is None for c in clips)
    log.info("%s: %d clips (%d labelled, %d self-reconstruction only)", root, len(clips),
             len(clips) - unlabelled, unlabelled)
    return clips


def random_span(frames: int, min_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """A uniformly drawn (start, length) of at least min(min_frames, frames) frames."""
    low = max(2, min(min_frames, frames))
    length = int(rng.integers(low, frames + 1))
    return int(rng.integers(0, frames - length + 1)), length


class PairDataset(torch.utils.data.Dataset):
    """Item `(index, epoch)` -> one pseudo pair anchored at clip `index` (a dict, see `_load`).

    The partner clips are drawn from a generator seeded by (seed, epoch, index), so an item
    is the same on every rank and after a resume. A labelled clip without partners (or every
    clip with `cross=False`) yields a self-reconstruction item: `paired` False, input21 and
    target11 repeat the anchor.

    `random_crop_s` > 0: every clip of an item is cut to a random span of at least that many
    seconds (the whole clip when shorter), drawn from the same generator. The anchor's span
    sets target11's at the same fractions of its length (the cross reconstruction stretches
    the content to target11's frames); input21 gets its own span. A model trained on whole
    clips can learn a clip's length as its emotion; a stream's windows see parts of utterances.
    """

    def __init__(self, clips: list[Clip], seed: int = 0, cross: bool = True, default_level: int = 1,
                 default_person: int = 0, random_crop_s: float = 0.0):
        self.clips, self.seed, self.random_crop_s = list(clips), seed, random_crop_s
        self.default_level, self.default_person = default_level, default_person
        self.partners: list[list[tuple[int, int]]] = [[] for _ in self.clips]
        if cross:
            self._index_partners()
        n_paired = sum(bool(p) for p in self.partners)
        if cross and n_paired < len(self.clips):
            log.info("%d of %d clips have cross-reconstruction partners; the rest train self-"
                     "reconstruction only", n_paired, len(self.clips))

    def _index_partners(self) -> None:
        by_key: dict[tuple, list[int]] = {}  # (person, level, sentence, emotion) -> clip indices
        for i, c in enumerate(self.clips):
            if c.labels is not None:
                lab = c.labels
                by_key.setdefault((lab.person, lab.level, lab.sentence, lab.emotion), []).append(i)
        for i, c in enumerate(self.clips):
            if c.labels is None:
                continue
            a = c.labels
            for (person, level, sentence, emotion), idx21 in by_key.items():
                if person != a.person or level != a.level or sentence == a.sentence or emotion == a.emotion:
                    continue
                idx11 = by_key.get((a.person, a.level, a.sentence, emotion), [])
                self.partners[i] += [(j, k) for j in idx21 for k in idx11]

    def __len__(self) -> int:
        return len(self.clips)

    def num_paired(self) -> int:
        return sum(bool(p) for p in self.partners)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        partners = self.partners[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        if partners:
            j, k = partners[int(rng.integers(len(partners)))]
        else:
            j, k = index, index
        return self._load(index, j, k, rng)

    def _spans(self, a: Clip, b: Clip, c11: Clip, rng: np.random.Generator) -> tuple[tuple[int, int], ...]:
        """(start, frames) of input12/target12, input21 and target11."""
        if self.random_crop_s <= 0:
            return (0, a.num_frames), (0, b.num_frames), (0, c11.num_frames)
        min_frames = math.ceil(self.random_crop_s * FPS)
        start, length = random_span(a.num_frames, min_frames, rng)
        scale = c11.num_frames / a.num_frames
        length11 = min(c11.num_frames, max(2, round(length * scale)))
        start11 = min(round(start * scale), c11.num_frames - length11)
        return (start, length), random_span(b.num_frames, min_frames, rng), (start11, length11)

    def _load(self, i12: int, i21: int, i11: int, rng: np.random.Generator) -> dict:
        a, b, c11 = self.clips[i12], self.clips[i21], self.clips[i11]
        lab = a.labels
        span12, span21, span11 = self._spans(a, b, c11, rng)

        def target(c: Clip, span: tuple[int, int]) -> torch.Tensor:
            start, frames = span
            return torch.from_numpy(np.load(c.npy)[start:start + frames].astype(np.float32))

        return {
            "input12": torch.from_numpy(crop_audio(load_audio(a.wav, a.num_samples), *span12)),
            "input21": torch.from_numpy(crop_audio(load_audio(b.wav, b.num_samples), *span21)),
            "target11": target(c11, span11),
            "target12": target(a, span12),
            "level": lab.level if lab else self.default_level,
            "person": lab.person if lab else self.default_person,
            "emotion": b.emotion_class,  # classifier label of input21 (-1: no label)
            "paired": i21 != i12,
            "stems": (a.stem, b.stem, self.clips[i11].stem),
        }
