"""The Live Link Face format: Unreal's 61 values (the 52 ARKit blendshapes, then head and eye
yaw/pitch/roll) in the order of its EARFaceBlendShape, and the CSV that the Live Link Face app
records (the same 61 names in another order: JawRight before JawLeft, MouthRight before
MouthLeft), so everything here maps by name, never by position. bridges/livelink.py sends the
same values as UDP packets."""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInput
from ..model.config import BLENDSHAPE_NAMES, FPS

NUM_VALUES = 61
# Unreal's EARFaceBlendShape (ARTrackable.h), the order of the packet's 61 floats.
LIVELINK_NAMES: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft",
    "EyeSquintLeft", "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight",
    "EyeLookOutRight", "EyeLookUpRight", "EyeSquintRight", "EyeWideRight", "JawForward", "JawLeft",
    "JawRight", "JawOpen", "MouthClose", "MouthFunnel", "MouthPucker", "MouthLeft", "MouthRight",
    "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft",
    "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight", "MouthRollLower", "MouthRollUpper",
    "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft",
    "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight",
    "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
    "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
    "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)
HEAD_EYE_NAMES = LIVELINK_NAMES[52:]

# The Live Link Face app's CSV column order (after Timecode, BlendShapeCount).
CSV_NAMES: tuple[str, ...] = (
    LIVELINK_NAMES[:15] + ("JawRight", "JawLeft") + LIVELINK_NAMES[17:21] + ("MouthRight", "MouthLeft")
    + LIVELINK_NAMES[23:]
)
CSV_HEADER: tuple[str, ...] = ("Timecode", "BlendShapeCount") + CSV_NAMES

_TIMECODE = re.compile(r"^(\d+):(\d\d):(\d\d):(\d+)(?:\.(\d+))?$")


def livelink_index(names=BLENDSHAPE_NAMES) -> np.ndarray:
    """For each ARKit name in `names` (any case), its position among the 61 packet values."""
    lookup = {n.lower(): i for i, n in enumerate(LIVELINK_NAMES[:52])}
    missing = [n for n in names if n.lower() not in lookup]
    if missing or len(names) != 52:
        raise InvalidInput(f"expected the 52 ARKit blendshape names, got {len(names)} names"
                           f"{'; unknown: ' + ', '.join(missing) if missing else ''}")
    return np.array([lookup[n.lower()] for n in names])


def to_livelink(blendshapes, names=BLENDSHAPE_NAMES, head_eyes=None, clamp: bool = True) -> np.ndarray:
    """[T, 52] (or [52]) curves in `names` order -> float32 [T, 61] (or [61]) in packet order.

    head_eyes: optional [T, 9] (or [9]) head yaw/pitch/roll and eye yaw/pitch/roll; zeros if None.
    clamp: limit the blendshapes to [0, 1], the range ARKit weights have (the model's raw output
    can stray slightly outside it).
    """
    x = np.asarray(blendshapes, dtype=np.float32)
    if x.ndim not in (1, 2) or x.shape[-1] != 52:
        raise InvalidInput(f"expected blendshapes of shape [T, 52] or [52], got {x.shape}")
    out = np.zeros(x.shape[:-1] + (NUM_VALUES,), np.float32)
    out[..., livelink_index(names)] = np.clip(x, 0.0, 1.0) if clamp else x
    if head_eyes is not None:
        out[..., 52:] = np.broadcast_to(np.asarray(head_eyes, np.float32), x.shape[:-1] + (9,))
    return out


def timecode(frame: int, fps: int = FPS) -> str:
    """Frame index -> `HH:MM:SS:FF.fff` (FF the frame within the second, .fff the sub-frame)."""
    seconds, ff = divmod(int(frame), int(fps))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}:{ff:02d}.000"


def parse_timecode(text: str, fps: int = FPS) -> float:
    """`HH:MM:SS:FF.fff` -> frames (with the sub-frame as a fraction)."""
    m = _TIMECODE.match(text.strip())
    if not m:
        raise InvalidInput(f"bad timecode {text!r}, expected HH:MM:SS:FF.fff")
    h, mi, s, ff, frac = m.groups()
    return (int(h) * 3600 + int(mi) * 60 + int(s)) * fps + int(ff) + float(f"0.{frac or 0}")


def write_livelink_csv(path: str | os.PathLike, blendshapes, names=BLENDSHAPE_NAMES, fps: int = FPS,
                       head_eyes=None, start_frame: int = 0, clamp: bool = True, **_) -> None:
    """The Live Link Face app's CSV: Timecode, BlendShapeCount, 61 values with 10 decimals."""
    if int(fps) != fps:
        raise InvalidInput(f"Live Link Face timecodes need an integer frame rate, got {fps}")
    values = to_livelink(blendshapes, names, head_eyes, clamp)
    order = [LIVELINK_NAMES.index(n) for n in CSV_NAMES]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for i, row in enumerate(values[:, order]):
        w.writerow([timecode(start_frame + i, int(fps)), NUM_VALUES, *(f"{v:.10f}" for v in row)])
    Path(path).write_text(buf.getvalue())


@dataclass(frozen=True)
class LiveLinkCSV:
    blendshapes: np.ndarray  # float32 [T, 52] in BLENDSHAPE_NAMES order
    head_eyes: np.ndarray  # float32 [T, 9] in HEAD_EYE_NAMES order
    frames: np.ndarray  # float64 [T], each row's timecode in frames (sub-frame as fraction)
    names: tuple[str, ...] = BLENDSHAPE_NAMES


def read_livelink_csv(path: str | os.PathLike, fps: int = FPS) -> LiveLinkCSV:
    """Read a Live Link Face CSV (the app's or ours); columns are matched by name, any case."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise InvalidInput(f"{path}: empty file")
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] != ["timecode", "blendshapecount"]:
        raise InvalidInput(f"{path}: not a Live Link Face CSV (header starts {rows[0][:2]})")
    col = {h: i for i, h in enumerate(header)}
    missing = [n for n in BLENDSHAPE_NAMES if n.lower() not in col]
    if missing:
        raise InvalidInput(f"{path}: missing columns {', '.join(missing)}")
    body = [r for r in rows[1:] if r]
    try:
        table = np.array([[float(v) for v in r[2:]] for r in body], np.float64).reshape(len(body), -1)
    except ValueError as e:
        raise InvalidInput(f"{path}: {e}") from None

    def pick(names):
        return table[:, [col[n.lower()] - 2 for n in names]].astype(np.float32)

    head = (pick(HEAD_EYE_NAMES) if all(n.lower() in col for n in HEAD_EYE_NAMES)
            else np.zeros((len(body), 9), np.float32))
    frames = np.array([parse_timecode(r[0], fps) for r in body], np.float64)
    return LiveLinkCSV(pick(BLENDSHAPE_NAMES), head, frames)
