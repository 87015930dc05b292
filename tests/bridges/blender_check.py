"""Run inside Blender (by test_blender.py): blender -b --factory-startup --python-exit-code 1
--python blender_check.py -- ADDON_FILE DATA_DIR. Any failed assertion exits non-zero.

DATA_DIR holds the curves in every format (written by emotalk_fast), the expected keyed values
(computed with numpy outside Blender), and a Live Link packet encoded by emotalk_fast."""
import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import bpy

addon_file, data = sys.argv[sys.argv.index("--") + 1 :]
data = Path(data)
spec = importlib.util.spec_from_file_location("emotalk_blender", addon_file)
eb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eb)
expected = json.loads((data / "expected.json").read_text())

# A small mesh with shape keys named as rigs name them: exact, other case, and a custom name.
KEYS = {"jawOpen": "jawOpen", "jawLeft": "JAWLEFT", "mouthLeft": "MouthLeft", "eyeBlinkLeft": "eyeblinkleft",
        "mouthSmileLeft": "Smile_L"}
mesh = bpy.data.meshes.new("Face")
mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
obj = bpy.data.objects.new("Face", mesh)
bpy.context.scene.collection.objects.link(obj)
obj.shape_key_add(name="Basis")
for k in KEYS.values():
    obj.shape_key_add(name=k)
blocks = obj.data.shape_keys.key_blocks
scene = bpy.context.scene


def check(report, want, start, tag):
    assert set(report["bound"]) == set(KEYS), (tag, report["bound"])
    assert report["frames"] == len(want), (tag, report["frames"], len(want))
    fcurves = {fc.data_path: fc for fc in obj.data.shape_keys.animation_data.action.fcurves}
    for arkit, block in KEYS.items():
        c = eb.ARKIT_NAMES.index(arkit)
        fc = fcurves[f'key_blocks["{block}"].value']
        assert len(fc.keyframe_points) == len(want), tag
        for j, row in enumerate(want):
            got = fc.evaluate(start + j)
            assert abs(got - row[c]) < 1e-6, (tag, arkit, j, got, row[c])
    # and what the scene really evaluates at a frame
    for j in (0, len(want) // 2, len(want) - 1):
        scene.frame_set(start + j)
        for arkit, block in KEYS.items():
            got = blocks[block].value
            assert abs(got - want[j][eb.ARKIT_NAMES.index(arkit)]) < 1e-6, (tag, "frame_set", arkit, j, got)


mapping = {"mouthSmileLeft": "Smile_L"}
scene.render.fps, scene.render.fps_base = 30, 1.0
for name in ("curves.npy", "curves.json", "curves.csv", "curves_livelinkface.csv"):
    report = eb.apply_animation(obj, data / name, mapping=mapping, start_frame=1)
    check(report, expected["at30"], 1, name)
    assert report["fps"] == 30 and "tongueOut" in report["missing"]

# the mapping hook as a function; without it the custom-named key stays unbound
report = eb.apply_animation(obj, data / "curves.json", mapping=lambda n: "Smile_L" if n == "mouthSmileLeft" else n)
assert "mouthSmileLeft" in report["bound"]
assert "mouthSmileLeft" not in eb.apply_animation(obj, data / "curves.json")["bound"]

# a 24 fps scene: keys at every scene frame, resampled linearly from 30 fps
scene.render.fps = 24
report = eb.apply_animation(obj, data / "curves.json", mapping=mapping, start_frame=10)
check(report, expected["at24"], 10, "24 fps")
assert scene.frame_end >= 10 + len(expected["at24"]) - 1
scene.render.fps = 30

# script mode's argument handling, on the same scene
obj.select_set(True)
bpy.context.view_layer.objects.active = obj
(data / "map.json").write_text(json.dumps(mapping))
report = eb.main([str(data / "curves.npy"), "--object", "Face", "--map", str(data / "map.json"), "--start-frame", "1"])
check(report, expected["at30"], 1, "main()")

# live: a packet from emotalk_fast's encoder, over loopback, applied on the main thread
rx = eb.LiveLinkReceiver(obj, port=0, host="127.0.0.1", mapping=mapping).start()
assert bpy.app.timers.is_registered(rx.timer)
obj.data.shape_keys.animation_data.action = None  # so only the packet drives the keys
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.sendto((data / "packet.bin").read_bytes(), ("127.0.0.1", rx.port))
tx.sendto(b"garbage", ("127.0.0.1", rx.port))
deadline = time.monotonic() + 5.0
frame = None
while frame is None and time.monotonic() < deadline:  # timers do not run in background mode: poll
    time.sleep(0.01)
    frame = rx.poll()
assert frame == expected["packet_frame"], frame
for arkit, block in KEYS.items():
    want = expected["packet_values"][eb.ARKIT_NAMES.index(arkit)]
    assert abs(blocks[block].value - want) < 1e-6, ("live", arkit, blocks[block].value, want)
while rx.bad == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
assert rx.bad == 1 and rx.received == 1, (rx.bad, rx.received)
rx.stop()
assert not bpy.app.timers.is_registered(rx.timer)
tx.close()

# the add-on registers and unregisters cleanly
eb.register()
assert hasattr(bpy.ops.emotalk, "import_curves")
eb.unregister()
print("BLENDER CHECK OK", bpy.app.version_string)
