"""Blender: EmoTalk blendshape curves onto a mesh's shape keys, keyframed (offline) or applied as
Live Link Face packets arrive (live). The model runs outside Blender; this file runs inside it.

Self-contained on purpose: the standard library and bpy only (Debian's Blender has no numpy, and
Blender's Python has no torch), with bpy imported inside the functions that need it, so the
file also imports as `emotalk_fast.bridges.blender` in plain Python. Use it as

- a script:  blender face.blend --background --python blender.py -- speech.json --object Face --save out.blend
             blender face.blend --python blender.py -- --live --object Face      (listen on port 11111)
- a module:  apply_animation(obj, "speech.json"), LiveLinkReceiver(obj).start()
- an add-on: Preferences > Add-ons > Install... this file; File > Import > EmoTalk curves, and
             Object > EmoTalk Live Link (start/stop).

Shape keys are matched to the 52 ARKit names case-insensitively ('jawOpen' binds 'JawOpen' or
'JAWOPEN'); `mapping` (a dict ARKit name -> key name, or a function returning a key name or
None) covers rigs that name them otherwise.
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import os
import socket
import struct
import sys
import threading
from array import array

bl_info = {
    "name": "EmoTalk blendshapes",
    "author": "emotalk_fast",
    "version": (0, 1, 0),
    "blender": (3, 0, 0),
    "location": "File > Import > EmoTalk curves; Object > EmoTalk Live Link",
    "description": "Keyframe ARKit shape keys from EmoTalk curves, or drive them live from Live Link Face packets",
    "category": "Animation",
}

FPS = 30  # EmoTalk's frame rate
# The 52 ARKit names in EmoTalk's column order (emotalk_fast.model.config.BLENDSHAPE_NAMES).
ARKIT_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
# The first 52 of the Live Link Face packet's values (Unreal's EARFaceBlendShape order,
# emotalk_fast.bridges.livelink.LIVELINK_NAMES).
LIVELINK_NAMES = (
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
)
LIVELINK_PORT = 11111
_ARKIT_INDEX = {n.lower(): i for i, n in enumerate(ARKIT_NAMES)}


class Curves:
    """Frames [T][52] (lists of floats) in ARKIT_NAMES order at `fps`."""

    def __init__(self, frames, fps=FPS):
        self.frames, self.fps = frames, fps

    def __len__(self):
        return len(self.frames)


# --- reading curves (no numpy) -----------------------------------------------------------------
def _reorder(rows, names):
    """Rows in `names` order -> rows in ARKIT_NAMES order (by name, any case)."""
    col = {n.lower(): i for i, n in enumerate(names)}
    missing = [n for n in ARKIT_NAMES if n.lower() not in col]
    if missing:
        raise ValueError(f"missing blendshape columns: {', '.join(missing)}")
    idx = [col[n.lower()] for n in ARKIT_NAMES]
    return [[float(r[i]) for i in idx] for r in rows]


def _read_npy(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file")
    if data[6] == 1:
        (hlen,), start = struct.unpack_from("<H", data, 8), 10
    else:
        (hlen,), start = struct.unpack_from("<I", data, 8), 12
    header = ast.literal_eval(data[start : start + hlen].decode("latin1"))
    kind = {"<f4": "f", "<f8": "d"}.get(header["descr"])
    shape = header["shape"]
    if kind is None or header["fortran_order"] or len(shape) != 2 or shape[1] != 52:
        raise ValueError(f"{path}: expected a C-order float32/float64 [T, 52] array, got {header}")
    values = array(kind)
    values.frombytes(data[start + hlen :][: shape[0] * 52 * values.itemsize])
    if sys.byteorder == "big":
        values.byteswap()
    return [list(values[t * 52 : (t + 1) * 52]) for t in range(shape[0])]


def load_curves(source, fps=None) -> Curves:
    """An Animation (anything with .blendshapes, .names, .fps), or a saved .npy / .json / .csv
    (emotalk_fast's own CSV or a Live Link Face CSV). fps overrides the file's rate (a Live
    Link Face CSV does not store one; 30 is assumed)."""
    if hasattr(source, "blendshapes"):
        rows = _reorder(source.blendshapes.tolist(), source.names)
        return Curves(rows, fps or source.fps)
    path = os.fspath(source)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return Curves(_read_npy(path), fps or FPS)
    if ext == ".json":
        with open(path) as f:
            doc = json.load(f)
        return Curves(_reorder(doc["frames"], doc.get("names", ARKIT_NAMES)), fps or doc.get("fps", FPS))
    if ext == ".csv":
        with open(path, newline="") as f:
            table = [r for r in csv.reader(f) if r]
        head = [h.strip() for h in table[0]]
        if [h.lower() for h in head[:2]] == ["timecode", "blendshapecount"]:  # Live Link Face
            return Curves(_reorder([r[2:] for r in table[1:]], head[2:]), fps or FPS)
        if head[:2] == ["frame", "time"]:  # emotalk_fast's CSV
            times = [float(r[1]) for r in table[1:3]]
            rate = round(1 / (times[1] - times[0])) if len(times) == 2 and times[1] > times[0] else FPS
            return Curves(_reorder([r[2:] for r in table[1:]], head[2:]), fps or rate)
        raise ValueError(f"{path}: unknown CSV header {head[:3]}")
    raise ValueError(f"cannot read {path}: use .npy, .json or .csv")


def resample(frames, src_fps, dst_fps):
    """Linear interpolation of [T][C] frames at src_fps onto dst_fps, from the same start."""
    if not frames or src_fps == dst_fps:
        return [list(r) for r in frames]
    n = int(math.floor((len(frames) - 1) * dst_fps / src_fps + 1e-9)) + 1
    out = []
    for j in range(n):
        x = j * src_fps / dst_fps
        i = min(int(math.floor(x + 1e-9)), len(frames) - 1)
        w = x - i
        if w <= 1e-9 or i + 1 >= len(frames):
            out.append(list(frames[i]))
        else:
            a, b = frames[i], frames[i + 1]
            out.append([(1 - w) * p + w * q for p, q in zip(a, b)])
    return out


# --- shape keys ----------------------------------------------------------------------------------
def shape_key_map(obj, mapping=None):
    """{ARKit name: shape key name} for the keys of `obj` that receive curves.

    mapping: None (match ARKit names case-insensitively), a dict {ARKit name: key name} that
    overrides the match for the names it lists, or a function ARKit name -> key name or None.
    """
    key = obj.data.shape_keys
    if key is None:
        raise ValueError(f"object {obj.name!r} has no shape keys")
    blocks = {kb.name.lower(): kb.name for kb in key.key_blocks if kb != key.reference_key}
    bound = {}
    overrides = {k.lower(): v for k, v in mapping.items()} if isinstance(mapping, dict) else {}
    for name in ARKIT_NAMES:
        if callable(mapping):
            target = mapping(name)
        else:
            target = overrides.get(name.lower(), name)
        if target is not None and target.lower() in blocks:
            bound[name] = blocks[target.lower()]
    return bound


def _fcurves(id_data, action):
    """The F-curve collection of `action` as assigned to `id_data` (slotted actions in 4.4+)."""
    if hasattr(action, "fcurves") and not getattr(action, "is_action_layered", False):
        return action.fcurves
    from bpy_extras import anim_utils  # Blender 4.4+

    return anim_utils.action_ensure_channelbag_for_slot(action, id_data.animation_data.action_slot).fcurves


def apply_animation(obj, source, mapping=None, start_frame=None, fps=None, clamp=True, set_range=True,
                    action_name="EmoTalk"):
    """Keyframe the shape keys of `obj` from `source` (see load_curves) at the scene's frame
    rate, resampling linearly from 30 fps when it differs. A new action replaces the shape
    keys' current one. Returns a report: frames, fps, bound names, missing names."""
    import bpy

    curves = load_curves(source, fps)
    scene = bpy.context.scene
    scene_fps = scene.render.fps / scene.render.fps_base
    frames = resample(curves.frames, curves.fps, scene_fps)
    if not frames:
        raise ValueError("no frames to apply")
    bound = shape_key_map(obj, mapping)
    if not bound:
        raise ValueError(f"no shape key of {obj.name!r} matches an ARKit name; pass mapping=")
    start = scene.frame_start if start_frame is None else int(start_frame)
    key = obj.data.shape_keys
    ad = key.animation_data or key.animation_data_create()
    ad.action = bpy.data.actions.new(action_name)
    if hasattr(ad, "action_slot") and ad.action_slot is None and hasattr(ad, "action_suitable_slots"):
        ad.action_slot = ad.action.slots.new(id_type="KEY", name=key.name)
    fcurves = _fcurves(key, ad.action)
    n = len(frames)
    for name, block in bound.items():
        c = ARKIT_NAMES.index(name)
        fc = fcurves.new(key.key_blocks[block].path_from_id("value"))  # quotes in names escaped
        fc.keyframe_points.add(n)
        co = []
        for j, row in enumerate(frames):
            v = row[c]
            co += (start + j, min(max(v, 0.0), 1.0) if clamp else v)
        fc.keyframe_points.foreach_set("co", co)
        for kp in fc.keyframe_points:
            kp.interpolation = "LINEAR"
        fc.update()
    if set_range:
        scene.frame_end = max(scene.frame_end, start + n - 1)
    return {"frames": n, "fps": scene_fps, "source_fps": curves.fps, "bound": bound,
            "missing": [n_ for n_ in ARKIT_NAMES if n_ not in bound]}


# --- live: Live Link Face packets ------------------------------------------------------------------
def decode_packet(data):
    """A Live Link Face packet -> (subject, frame number, 52 values in ARKIT_NAMES order)."""
    if not data or data[0] != 6:
        raise ValueError("not a version-6 Live Link Face packet")
    pos, strings = 1, []
    for _ in range(2):
        (n,) = struct.unpack_from(">i", data, pos)
        strings.append(data[pos + 4 : pos + 4 + n].decode("utf-8"))
        pos += 4 + n
    frame, _sub, _num, _den, count = struct.unpack_from(">ifiiB", data, pos)
    if count != 61 or len(data) != pos + 17 + 4 * count:
        raise ValueError(f"{count} values in a {len(data)}-byte packet, expected 61")
    values = struct.unpack_from(">61f", data, pos + 17)
    by_name = {n.lower(): values[i] for i, n in enumerate(LIVELINK_NAMES)}
    return strings[1], frame, [by_name[n.lower()] for n in ARKIT_NAMES]


class LiveLinkReceiver:
    """Receives Live Link Face packets on a socket thread and applies the newest one to the
    shape keys of `obj` on Blender's main thread (a bpy.app.timers callback), since bpy may
    only be touched from there. subject: accept only packets of this subject (None: any)."""

    def __init__(self, obj, port=LIVELINK_PORT, host="0.0.0.0", mapping=None, subject=None, interval=1 / 60):
        self.obj_name, self.subject, self.interval = obj.name, subject, interval
        self.bound = shape_key_map(obj, mapping)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = self.applied = self.bad = 0
        self.last_frame = None
        self._latest = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="emotalk-livelink", daemon=True)
        self.timer = self._tick  # one bound method: bpy.app.timers matches callbacks by identity

    def start(self):
        import bpy

        self._thread.start()
        bpy.app.timers.register(self.timer, first_interval=0.0, persistent=True)
        return self

    def _listen(self):
        while not self._stop.is_set():  # bounded: checks the flag every 0.2 s
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                subject, frame, values = decode_packet(data)
            except (ValueError, struct.error, UnicodeDecodeError):
                self.bad += 1
                continue
            if self.subject is None or subject == self.subject:
                self.received += 1
                self._latest = (frame, values)  # one reference swap: atomic under the GIL

    def poll(self):
        """Apply the newest packet, if one came since the last call; return its frame number."""
        import bpy

        latest, self._latest = self._latest, None
        obj = bpy.data.objects.get(self.obj_name)
        if latest is None or obj is None:
            return None
        frame, values = latest
        blocks = obj.data.shape_keys.key_blocks
        for name, block in self.bound.items():
            blocks[block].value = min(max(values[ARKIT_NAMES.index(name)], 0.0), 1.0)
        self.applied += 1
        self.last_frame = frame
        return frame

    def _tick(self):
        if self._stop.is_set():
            return None  # unregisters the timer
        self.poll()
        return self.interval

    def stop(self):
        import bpy

        self._stop.set()
        if bpy.app.timers.is_registered(self.timer):
            bpy.app.timers.unregister(self.timer)
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.sock.close()


# --- script entry ------------------------------------------------------------------------------
def _object(name):
    import bpy

    obj = bpy.data.objects.get(name) if name else bpy.context.active_object
    if obj is None or obj.type != "MESH":
        raise ValueError(f"no mesh object {name!r}" if name else "no active mesh object; pass --object NAME")
    return obj


def main(argv=None):
    """blender [file.blend] --python blender.py -- CURVES [--object NAME] [--map MAP.json] [--save OUT.blend]
    blender [file.blend] --python blender.py -- --live [--port 11111] [--object NAME]"""
    argv = sys.argv[sys.argv.index("--") + 1 :] if argv is None and "--" in sys.argv else (argv or [])
    p = argparse.ArgumentParser(prog="blender --python blender.py --", description=main.__doc__)
    p.add_argument("curves", nargs="?", help="EmoTalk curves: .npy, .json, .csv or a Live Link Face .csv")
    p.add_argument("--object", help="mesh with ARKit shape keys (default: the active object)")
    p.add_argument("--map", help="JSON file {ARKit name: shape key name} for differently named keys")
    p.add_argument("--start-frame", type=int, help="first frame (default: the scene's start)")
    p.add_argument("--fps", type=float, help="the curves' frame rate when the file does not say (default 30)")
    p.add_argument("--save", help="save the .blend here afterwards")
    p.add_argument("--live", action="store_true", help="receive Live Link Face packets instead")
    p.add_argument("--port", type=int, default=LIVELINK_PORT)
    args = p.parse_args(argv)
    obj = _object(args.object)
    mapping = json.load(open(args.map)) if args.map else None
    if args.live:
        rx = LiveLinkReceiver(obj, args.port, mapping=mapping).start()
        globals()["_live_receiver"] = rx
        print(f"EmoTalk: listening for Live Link Face on UDP {rx.port}, driving {len(rx.bound)} shape keys of {obj.name}")
        return rx
    if not args.curves:
        p.error("give a curves file or --live")
    report = apply_animation(obj, args.curves, mapping, args.start_frame, args.fps)
    print(f"EmoTalk: keyed {len(report['bound'])} shape keys of {obj.name} over {report['frames']} frames "
          f"at {report['fps']:g} fps (from {report['source_fps']:g}); unmatched: {len(report['missing'])}")
    if args.save:
        import bpy

        bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(args.save))
    return report


# --- add-on ------------------------------------------------------------------------------------
_classes = []


def _define_addon():
    import bpy
    from bpy_extras.io_utils import ImportHelper

    class EMOTALK_OT_import_curves(bpy.types.Operator, ImportHelper):
        """Keyframe the active mesh's ARKit shape keys from EmoTalk curves"""

        bl_idname = "emotalk.import_curves"
        bl_label = "Import EmoTalk curves"
        bl_options = {"REGISTER", "UNDO"}
        filter_glob: bpy.props.StringProperty(default="*.json;*.npy;*.csv", options={"HIDDEN"})

        def execute(self, context):
            try:
                report = apply_animation(_object(None), self.filepath)
            except (ValueError, OSError, KeyError) as e:
                self.report({"ERROR"}, str(e))
                return {"CANCELLED"}
            self.report({"INFO"}, f"keyed {len(report['bound'])} shape keys over {report['frames']} frames")
            return {"FINISHED"}

    class EMOTALK_OT_live(bpy.types.Operator):
        """Start or stop driving the active mesh's shape keys from Live Link Face packets"""

        bl_idname = "emotalk.live"
        bl_label = "EmoTalk Live Link (start/stop)"
        port: bpy.props.IntProperty(default=LIVELINK_PORT, min=1, max=65535)

        def execute(self, context):
            rx = globals().get("_live_receiver")
            if rx is not None:
                rx.stop()
                globals()["_live_receiver"] = None
                self.report({"INFO"}, "EmoTalk Live Link stopped")
                return {"FINISHED"}
            try:
                globals()["_live_receiver"] = LiveLinkReceiver(_object(None), self.port).start()
            except (ValueError, OSError) as e:
                self.report({"ERROR"}, str(e))
                return {"CANCELLED"}
            self.report({"INFO"}, f"EmoTalk Live Link listening on UDP {self.port}")
            return {"FINISHED"}

    return [EMOTALK_OT_import_curves, EMOTALK_OT_live]


def _menu_import(self, context):
    self.layout.operator("emotalk.import_curves", text="EmoTalk curves (.json/.npy/.csv)")


def _menu_object(self, context):
    self.layout.operator("emotalk.live")


def register():
    import bpy

    _classes[:] = _define_addon()
    for c in _classes:
        bpy.utils.register_class(c)
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)
    bpy.types.VIEW3D_MT_object.append(_menu_object)


def unregister():
    import bpy

    rx = globals().get("_live_receiver")
    if rx is not None:
        rx.stop()
    bpy.types.VIEW3D_MT_object.remove(_menu_object)
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    for c in reversed(_classes):
        bpy.utils.unregister_class(c)


if __name__ == "__main__":
    main()
