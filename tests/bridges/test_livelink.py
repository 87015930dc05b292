"""Live Link Face: golden packet bytes, packets parsed over loopback UDP by pylivelinkface (an
independent parser), and the app's CSV."""
import socket

import numpy as np
import pytest

from emotalk_fast import BLENDSHAPE_NAMES
from emotalk_fast.bridges.livelink import (CSV_HEADER, CSV_NAMES, LIVELINK_NAMES, decode_packet, encode_packet,
                                   read_livelink_csv, timecode, to_livelink, write_livelink_csv)
from emotalk_fast.bridges.live import LiveLinkSender

UUID = "01234567-89ab-cdef-0123-456789abcdef"


def known_frame() -> np.ndarray:
    """Our 52-column order with jawLeft 1.0, jawOpen 0.5, mouthLeft 0.25, mouthRight 0.75."""
    v = np.zeros(52, np.float32)
    for name, x in (("jawLeft", 1.0), ("jawOpen", 0.5), ("mouthLeft", 0.25), ("mouthRight", 0.75)):
        v[BLENDSHAPE_NAMES.index(name)] = x
    return v


def test_unreal_enum_order():
    # EARFaceBlendShape: the positions the issue names, and the head/eye tail
    assert LIVELINK_NAMES.index("JawLeft") == 15 and LIVELINK_NAMES.index("JawRight") == 16
    assert LIVELINK_NAMES.index("MouthLeft") == 21 and LIVELINK_NAMES.index("MouthRight") == 22
    assert LIVELINK_NAMES.index("JawOpen") == 17 and LIVELINK_NAMES.index("TongueOut") == 51
    assert LIVELINK_NAMES[52:55] == ("HeadYaw", "HeadPitch", "HeadRoll")
    assert len(set(LIVELINK_NAMES)) == 61
    assert {n.lower() for n in LIVELINK_NAMES[:52]} == {n.lower() for n in BLENDSHAPE_NAMES}
    # the app's CSV swaps the jaw and mouth left/right pairs
    assert CSV_NAMES[15:17] == ("JawRight", "JawLeft") and CSV_NAMES[21:23] == ("MouthRight", "MouthLeft")
    assert sorted(CSV_NAMES) == sorted(LIVELINK_NAMES)


def test_golden_packet():
    packet = encode_packet(to_livelink(known_frame()), 1234, subject="EmoTalk", device_id=UUID)
    floats = bytearray(61 * 4)
    floats[15 * 4 : 16 * 4] = b"\x3f\x80\x00\x00"  # JawLeft 1.0
    floats[17 * 4 : 18 * 4] = b"\x3f\x00\x00\x00"  # JawOpen 0.5
    floats[21 * 4 : 22 * 4] = b"\x3e\x80\x00\x00"  # MouthLeft 0.25
    floats[22 * 4 : 23 * 4] = b"\x3f\x40\x00\x00"  # MouthRight 0.75
    golden = (b"\x06"                                   # version
              + b"\x00\x00\x00\x24" + UUID.encode()     # device id, 36 bytes
              + b"\x00\x00\x00\x07" + b"EmoTalk"        # subject
              + b"\x00\x00\x04\xd2"                     # frame 1234
              + b"\x00\x00\x00\x00"                     # sub-frame 0.0
              + b"\x00\x00\x00\x1e" + b"\x00\x00\x00\x01"  # 30 / 1 fps
              + b"\x3d"                                 # 61 values
              + bytes(floats))
    assert packet == golden
    back = decode_packet(packet)
    assert (back.device_id, back.subject, back.frame_number, back.rate) == (UUID, "EmoTalk", 1234, (30, 1))
    np.testing.assert_array_equal(back.values, to_livelink(known_frame()))


def test_pylivelinkface_decodes_our_packets_over_udp():
    pylivelinkface = pytest.importorskip("pylivelinkface")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5.0)
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, (3, 52)).astype(np.float32)
    with LiveLinkSender("127.0.0.1", rx.getsockname()[1], subject="Face", device_id=UUID) as tx:
        for i, f in enumerate(frames):
            tx.send_frame(100 + i, f)
        assert tx.stats["errors"] == 0
    try:
        for i, f in enumerate(frames):
            ok, face = pylivelinkface.PyLiveLinkFace.decode(rx.recv(4096))
            assert ok and face.name == "Face" and face._frames == 100 + i
            assert face.fps == 30 and face._denominator == 1
            # pylivelinkface reads the device id's length byte 0x24 as a leading '$'
            assert face.uuid == "$" + UUID
            for j, name in enumerate(BLENDSHAPE_NAMES):
                shape = pylivelinkface.FaceBlendShape[name[0].upper() + name[1:]]
                assert face.get_blendshape(shape) == f[j], name
            for shape in list(pylivelinkface.FaceBlendShape)[52:]:
                assert face.get_blendshape(shape) == 0.0
    finally:
        rx.close()


def test_clamp_and_head_eyes():
    x = np.full((2, 52), 1.5, np.float32)
    x[:, 0] = -0.2
    out = to_livelink(x, head_eyes=np.arange(9, dtype=np.float32))
    assert out.shape == (2, 61) and out[:, :52].min() == 0.0 and out[:, :52].max() == 1.0
    np.testing.assert_array_equal(out[1, 52:], np.arange(9))
    np.testing.assert_array_equal(to_livelink(x, clamp=False)[0, LIVELINK_NAMES.index("BrowDownLeft")], np.float32(-0.2))


@pytest.mark.parametrize("bad,message", [
    (b"", "not a Live Link Face packet"),
    (b"\x05" + bytes(100), "packet version 5"),
    (encode_packet(np.zeros(61), 0)[:-4], "values in a"),
])
def test_decode_rejects_bad_packets(bad, message):
    with pytest.raises(ValueError, match=message):
        decode_packet(bad)


def test_bad_names_and_shapes():
    with pytest.raises(ValueError, match="unknown: fooLeft"):
        to_livelink(np.zeros(52), names=BLENDSHAPE_NAMES[:-1] + ("fooLeft",))
    with pytest.raises(ValueError, match=r"\[T, 52\]"):
        to_livelink(np.zeros((3, 51)))
    with pytest.raises(ValueError, match="cannot resolve"):
        LiveLinkSender("no-such-host.invalid", 11111)


def test_timecode():
    assert timecode(0) == "00:00:00:00.000"
    assert timecode(29) == "00:00:00:29.000"
    assert timecode(30 * 3661 + 7) == "01:01:01:07.000"


def test_csv_header_values_and_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (40, 52)).astype(np.float32)
    x[0] = known_frame()
    path = tmp_path / "take.csv"
    write_livelink_csv(path, x)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(CSV_HEADER)
    assert lines[0].startswith("Timecode,BlendShapeCount,EyeBlinkLeft,") and len(lines) == 41
    row = lines[1].split(",")
    assert row[:2] == ["00:00:00:00.000", "61"] and lines[31].startswith("00:00:01:00.000,61,")
    cells = dict(zip(CSV_HEADER, row))
    assert (cells["JawLeft"], cells["JawRight"], cells["JawOpen"]) == ("1.0000000000", "0.0000000000", "0.5000000000")
    assert (cells["MouthLeft"], cells["MouthRight"]) == ("0.2500000000", "0.7500000000")
    back = read_livelink_csv(path)
    np.testing.assert_allclose(back.blendshapes, x, atol=1e-9)
    np.testing.assert_array_equal(back.frames, np.arange(40))
    assert back.head_eyes.shape == (40, 9) and not back.head_eyes.any()


def test_csv_reader_takes_app_style_files(tmp_path):
    # a hand-written take as the app records it: other column case, sub-frames, head rotation
    names = [n if i % 2 else n.lower() for i, n in enumerate(CSV_NAMES)]
    values = np.zeros(61)
    values[CSV_NAMES.index("JawOpen")] = 0.125
    values[CSV_NAMES.index("HeadPitch")] = -0.3
    path = tmp_path / "app.csv"
    path.write_text("Timecode,BlendshapeCount," + ",".join(names) + "\n"
                    + "14:03:52:28.207,61," + ",".join(f"{v:.8f}" for v in values) + "\n")
    take = read_livelink_csv(path)
    assert take.blendshapes[0, BLENDSHAPE_NAMES.index("jawOpen")] == 0.125
    assert take.head_eyes[0, 1] == np.float32(-0.3)
    assert take.frames[0] == pytest.approx((14 * 3600 + 3 * 60 + 52) * 30 + 28.207)


def test_csv_reader_errors(tmp_path):
    p = tmp_path / "plain.csv"
    p.write_text("frame,time,jawOpen\n0,0.0,0.1\n")
    with pytest.raises(ValueError, match="not a Live Link Face CSV"):
        read_livelink_csv(p)
    p.write_text("Timecode,BlendShapeCount,JawOpen\n00:00:00:00.000,61,0.1\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_livelink_csv(p)


def test_animation_save_livelinkface(tmp_path):
    from emotalk_fast import Animation

    anim = Animation(np.tile(known_frame(), (3, 1)), np.zeros(7, np.float32), tuple("abcdefg"))
    anim.save(tmp_path / "plain.csv")
    assert (tmp_path / "plain.csv").read_text().startswith("frame,time,browDownLeft")  # the default stays
    anim.save(tmp_path / "take.csv", format="livelinkface")
    assert (tmp_path / "take.csv").read_text().startswith(",".join(CSV_HEADER) + "\n00:00:00:00.000,61,")
    np.testing.assert_array_equal(read_livelink_csv(tmp_path / "take.csv").blendshapes, anim.blendshapes)
    with pytest.raises(ValueError, match="writes a .csv"):
        anim.save(tmp_path / "take.json", format="livelinkface")
    with pytest.raises(ValueError, match="unknown format"):
        anim.save(tmp_path / "take.csv", format="fbx")
