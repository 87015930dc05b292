"""VMC protocol (Virtual Motion Capture; VSeeFace, Warudo, VMC4U for Unity, VMC4G for Godot):
OSC 1.0 messages over UDP.

Per frame, one `/VMC/Ext/Blend/Val ,sf <name> <value>` per blendshape, then
`/VMC/Ext/Blend/Apply`, which tells the receiver that the frame is complete. Datagrams are sent
one message each by default, because some receivers cannot read OSC bundles.
"""
from __future__ import annotations

import struct

import numpy as np

from ..model.config import BLENDSHAPE_NAMES
from ..errors import InvalidInput, InvalidType

DEFAULT_PORT = 39539  # a VMC performer (VSeeFace's, Warudo's, VMC4U's receiver) listens here
BLEND_VAL = "/VMC/Ext/Blend/Val"
BLEND_APPLY = "/VMC/Ext/Blend/Apply"
NAME_STYLES = ("perfect_sync", "arkit")


def _pad(b: bytes) -> bytes:
    """OSC strings end with a NUL and are padded with NULs to a multiple of 4 bytes."""
    return b + b"\0" * (4 - len(b) % 4)


def osc_message(address: str, *args) -> bytes:
    """An OSC 1.0 message with str ('s'), float ('f', float32) and int ('i', int32) arguments."""
    tags, data = ",", b""
    for a in args:
        if isinstance(a, str):
            tags, data = tags + "s", data + _pad(a.encode("utf-8"))
        elif isinstance(a, (bool, np.bool_)):
            raise InvalidType("OSC booleans are not supported here")
        elif isinstance(a, (int, np.integer)):
            tags, data = tags + "i", data + struct.pack(">i", int(a))
        elif isinstance(a, (float, np.floating)):
            tags, data = tags + "f", data + struct.pack(">f", float(a))
        else:
            raise InvalidType(f"cannot encode {type(a).__name__} as an OSC argument")
    return _pad(address.encode("ascii")) + _pad(tags.encode("ascii")) + data


def osc_bundle(messages: list[bytes], timetag: int = 1) -> bytes:
    """An OSC bundle; timetag 1 means 'immediately'."""
    return b"#bundle\0" + struct.pack(">Q", timetag) + b"".join(struct.pack(">i", len(m)) + m for m in messages)


def vmc_names(style: str = "perfect_sync", names=BLENDSHAPE_NAMES) -> tuple[str, ...]:
    """Blendshape names as a VMC receiver expects them.

    perfect_sync: PascalCase ('JawOpen'), the VRM blendshape clip names of VSeeFace's
        "Perfect Sync" models. arkit: Apple's camelCase ('jawOpen').
    """
    if style == "perfect_sync":
        return tuple(n[0].upper() + n[1:] for n in names)
    if style == "arkit":
        return tuple(n[0].lower() + n[1:] for n in names)
    raise InvalidInput(f"unknown VMC name style {style!r}: choose one of {NAME_STYLES}")


def frame_messages(values, names: tuple[str, ...]) -> list[bytes]:
    """One frame: a Blend/Val message per name, then Blend/Apply."""
    v = np.asarray(values, np.float32)
    if v.shape != (len(names),):
        raise InvalidInput(f"expected {len(names)} values, got shape {v.shape}")
    return [osc_message(BLEND_VAL, n, float(x)) for n, x in zip(names, v)] + [osc_message(BLEND_APPLY)]
