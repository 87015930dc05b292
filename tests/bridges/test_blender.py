"""Blender bridge: the self-contained add-on file read in plain Python, then run inside a real
Blender (headless) on a mesh with ARKit-named shape keys: keyed values at 30 and 24 fps, the
mapping hook, script mode, the add-on's registration, and the live Live Link receiver."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emotalk_fast import BLENDSHAPE_NAMES, Animation
from emotalk_fast.bridges import blender as eb
from emotalk_fast.bridges.livelink import LIVELINK_NAMES, encode_packet, to_livelink

ADDON = Path(eb.__file__)
CHECK = Path(__file__).with_name("blender_check.py")


def known_curves(frames: int = 10) -> np.ndarray:
    t, c = np.meshgrid(np.arange(frames), np.arange(52), indexing="ij")
    return (((t * 7 + c * 3) % 11) / 10).astype(np.float32)


def write_all(d: Path) -> np.ndarray:
    x = known_curves()
    anim = Animation(x, np.zeros(7, np.float32), tuple("abcdefg"))
    for name in ("curves.npy", "curves.json", "curves.csv"):
        anim.save(d / name)
    anim.save(d / "curves_livelinkface.csv", format="livelinkface")
    return x


def interp(x: np.ndarray, src: float, dst: float) -> np.ndarray:
    n = int(np.floor((len(x) - 1) * dst / src + 1e-9)) + 1
    at = np.arange(n) * src / dst
    return np.stack([np.interp(at, np.arange(len(x)), x[:, c]) for c in range(x.shape[1])], 1)


def test_tables_match_the_library():
    assert eb.ARKIT_NAMES == BLENDSHAPE_NAMES
    assert eb.LIVELINK_NAMES == LIVELINK_NAMES[:52]
    assert "torch" not in open(ADDON).read().split('"""')[2]  # nothing but the stdlib and bpy


def test_load_curves_every_format_without_bpy(tmp_path):
    x = write_all(tmp_path)
    for name in ("curves.npy", "curves.json", "curves.csv", "curves_livelinkface.csv"):
        curves = eb.load_curves(tmp_path / name)
        assert curves.fps == 30, name
        np.testing.assert_allclose(np.array(curves.frames), x, atol=1e-7, err_msg=name)
    anim = Animation(x, np.zeros(7, np.float32), tuple("abcdefg"))
    np.testing.assert_array_equal(np.array(eb.load_curves(anim).frames, np.float32), x)
    np.testing.assert_allclose(np.array(eb.resample(x.tolist(), 30, 24)), interp(x, 30, 24), atol=1e-6)
    np.testing.assert_allclose(np.array(eb.resample(x.tolist(), 30, 60)), interp(x, 30, 60), atol=1e-6)
    with pytest.raises(ValueError, match="use .npy, .json or .csv"):
        eb.load_curves(tmp_path / "x.txt")


def test_decode_packet_matches_the_encoder():
    v = known_curves(1)[0]
    subject, frame, values = eb.decode_packet(encode_packet(to_livelink(v), 77, subject="Face"))
    assert (subject, frame) == ("Face", 77)
    np.testing.assert_array_equal(np.array(values, np.float32), v)


def blender_command():
    """Debian's blender binary, else the bpy wheel in this Python; None when neither exists."""
    exe = shutil.which("blender")
    if exe:
        return [exe, "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(CHECK), "--"]
    if importlib.util.find_spec("bpy") is not None:
        return [sys.executable, str(CHECK), "--"]
    return None


@pytest.mark.skipif(blender_command() is None,
                    reason="neither Blender (apt-get install blender) nor the bpy wheel is installed")
def test_in_blender(tmp_path):
    x = write_all(tmp_path)
    v = known_curves(3)[2]
    (tmp_path / "packet.bin").write_bytes(encode_packet(to_livelink(v), 4321, subject="EmoTalk"))
    (tmp_path / "expected.json").write_text(json.dumps({
        "at30": x.tolist(), "at24": interp(x, 30, 24).tolist(),
        "packet_frame": 4321, "packet_values": v.tolist()}))
    r = subprocess.run(blender_command() + [str(ADDON), str(tmp_path)], capture_output=True, text=True,
                       timeout=180, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0 and "BLENDER CHECK OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]

    # script mode, as the README runs it: a saved scene in, keyed scene out
    scene = tmp_path / "face.blend"
    build = ("import bpy; m = bpy.data.meshes.new('Face'); m.from_pydata([(0,0,0),(1,0,0),(0,1,0)], [], [(0,1,2)]);"
             "o = bpy.data.objects.new('Face', m); bpy.context.scene.collection.objects.link(o);"
             "o.shape_key_add(name='Basis'); o.shape_key_add(name='JawOpen');"
             f"bpy.ops.wm.save_as_mainfile(filepath={str(scene)!r})")
    exe = shutil.which("blender")
    if exe is None:
        return
    subprocess.run([exe, "-b", "--factory-startup", "--python-exit-code", "1", "--python-expr", build],
                   check=True, capture_output=True, timeout=120)
    out = tmp_path / "keyed.blend"
    r = subprocess.run([exe, "-b", str(scene), "--python-exit-code", "1", "--python", str(ADDON), "--",
                        str(tmp_path / "curves.json"), "--object", "Face", "--save", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # a new scene runs at Blender's default 24 fps: 10 frames at 30 fps become 8 keys
    assert "EmoTalk: keyed 1 shape keys of Face over 8 frames at 24 fps (from 30)" in r.stdout and out.exists()
