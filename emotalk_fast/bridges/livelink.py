"""Unreal Live Link Face: the UDP packet that Unreal's Apple ARKit Face Live Link source reads
(the values and the app's CSV are io/livelink_format.py's, named here too).

Packet (version 6, all big-endian, as the iPhone app sends it to port 11111):

    uint8  version = 6
    int32  len, UTF-8 device id          (a 36-character UUID)
    int32  len, UTF-8 subject name
    int32  frame number, float32 sub-frame, int32 rate numerator, int32 rate denominator
    uint8  count = 61
    61 x float32                          (LIVELINK_NAMES order: Unreal's EARFaceBlendShape)

The 61 values are the 52 ARKit blendshapes, then head yaw/pitch/roll and left/right eye
yaw/pitch/roll.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

import numpy as np

from ..model.config import FPS
from ..errors import InvalidInput
from ..io.livelink_format import (  # noqa: F401  (the format, named here too)
    CSV_HEADER, CSV_NAMES, HEAD_EYE_NAMES, LIVELINK_NAMES, NUM_VALUES, LiveLinkCSV, livelink_index, parse_timecode,
    read_livelink_csv, timecode, to_livelink, write_livelink_csv)

DEFAULT_PORT = 11111  # Unreal's Live Link Face / Apple ARKit Face source listens here
PACKET_VERSION = 6


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
