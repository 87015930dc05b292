"""Unreal Live Link Face: the UDP packet that Unreal's Apple ARKit Face Live Link source reads,
and the CSV that the Live Link Face app records.

Packet (version 6, all big-endian, as the iPhone app sends it to port 11111):

    uint8  version = 6
    int32  len, UTF-8 device id          (a 36-character UUID)
    int32  len, UTF-8 subject name
    int32  frame number, float32 sub-frame, int32 rate numerator, int32 rate denominator
    uint8  count = 61
    61 x float32                          (LIVELINK_NAMES order: Unreal's EARFaceBlendShape)

The 61 values are the 52 ARKit blendshapes, then head yaw/pitch/roll and left/right eye
yaw/pitch/roll. The app's CSV lists the same 61 names in another order (JawRight before
JawLeft, MouthRight before MouthLeft), so everything here maps by name, never by position.
"""
from __future__ import annotations

import csv
import io
import os
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model.config import BLENDSHAPE_NAMES, FPS
from ..errors import InvalidInput

DEFAULT_PORT = 11111  # Unreal's Live Link Face / Apple ARKit Face source listens here
PACKET_VERSION = 6
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


def default_device_id(subject: str) -> str:
    """A stable 36-character UUID per subject name, so Unreal sees the same source each run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"emotalk_fast/livelink/{subject}"))


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack(">i", len(b)) + b


def encode_packet(values, frame_number: int, subject: str = "EmoTalk", device_id: str | None = None,
                  fps: int = FPS, sub_frame: float = 0.0) -> bytes:
    """One Live Link Face packet from 61 values in LIVELINK_NAMES order (see `to_livelink`)."""
    v = np.asarray(values, dtype=">f4")
    if v.shape != (NUM_VALUES,):
        raise InvalidInput(f"expected {NUM_VALUES} values in Live Link order, got shape {v.shape}")
    device_id = default_device_id(subject) if device_id is None else device_id
    head = struct.pack(">B", PACKET_VERSION) + _string(device_id) + _string(subject)
    return head + struct.pack(">ifiiB", int(frame_number), sub_frame, int(fps), 1, NUM_VALUES) + v.tobytes()


@dataclass(frozen=True)
class LiveLinkFrame:
    """One decoded packet."""

    device_id: str
    subject: str
    frame_number: int
    sub_frame: float
    rate: tuple[int, int]  # frames per second as numerator / denominator
    values: np.ndarray  # float32 [61] in LIVELINK_NAMES order


def decode_packet(data: bytes) -> LiveLinkFrame:
    """Parse a version-6 packet (ours or the app's); ValueError on anything else."""
    try:
        if data[0] != PACKET_VERSION:
            raise InvalidInput(f"packet version {data[0]}, expected {PACKET_VERSION}")
        pos, strings = 1, []
        for _ in range(2):
            (n,) = struct.unpack_from(">i", data, pos)
            strings.append(data[pos + 4 : pos + 4 + n].decode("utf-8"))
            pos += 4 + n
        frame, sub, num, den, count = struct.unpack_from(">ifiiB", data, pos)
        pos += 17
        if count != NUM_VALUES or len(data) != pos + 4 * count:
            raise InvalidInput(f"{count} values in a {len(data)}-byte packet, expected {NUM_VALUES}")
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise InvalidInput(f"not a Live Link Face packet: {e}") from None
    values = np.frombuffer(data, ">f4", count, pos).astype(np.float32)
    return LiveLinkFrame(strings[0], strings[1], frame, sub, (num, den), values)


# --- the app's CSV -----------------------------------------------------------------------------
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
