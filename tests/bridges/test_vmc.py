"""VMC protocol: our OSC datagrams parsed by python-osc, and received by a python-osc server on
loopback (python-osc is only the independent parser here; the encoder is ours)."""
import threading

import numpy as np
import pytest

from emotalk_fast import BLENDSHAPE_NAMES
from emotalk_fast.bridges.live import VMCSender
from emotalk_fast.bridges.vmc import frame_messages, osc_bundle, osc_message, vmc_names

pythonosc = pytest.importorskip("pythonosc")
from pythonosc.dispatcher import Dispatcher  # noqa: E402
from pythonosc.osc_bundle import OscBundle  # noqa: E402
from pythonosc.osc_message import OscMessage  # noqa: E402
from pythonosc.osc_server import BlockingOSCUDPServer  # noqa: E402


def test_golden_message():
    assert osc_message("/VMC/Ext/Blend/Val", "JawOpen", 0.5) == (
        b"/VMC/Ext/Blend/Val\0\0" + b",sf\0" + b"JawOpen\0" + b"\x3f\x00\x00\x00")
    assert osc_message("/VMC/Ext/Blend/Apply") == b"/VMC/Ext/Blend/Apply\0\0\0\0" + b",\0\0\0"


def test_name_styles():
    assert vmc_names("perfect_sync")[BLENDSHAPE_NAMES.index("jawOpen")] == "JawOpen"
    assert vmc_names("arkit") == BLENDSHAPE_NAMES
    assert vmc_names("perfect_sync", ("MouthLeft",)) == ("MouthLeft",)
    with pytest.raises(ValueError, match="unknown VMC name style"):
        vmc_names("vrm")


def test_python_osc_parses_a_frame():
    values = np.linspace(0, 1, 52, dtype=np.float32)
    names = vmc_names("perfect_sync")
    messages = [OscMessage(d) for d in frame_messages(values, names)]
    assert len(messages) == 53
    assert [m.address for m in messages] == ["/VMC/Ext/Blend/Val"] * 52 + ["/VMC/Ext/Blend/Apply"]
    assert [m.params[0] for m in messages[:52]] == list(names)
    np.testing.assert_array_equal(np.array([m.params[1] for m in messages[:52]], np.float32), values)
    assert messages[-1].params == []
    bundle = OscBundle(osc_bundle(frame_messages(values, names)))
    assert bundle.num_contents == 53 and bundle.content(52).address == "/VMC/Ext/Blend/Apply"
    assert bundle.content(3).params == [names[3], float(values[3])]


def test_osc_argument_types():
    assert OscMessage(osc_message("/a", 7, "x", 1.25)).params == [7, "x", 1.25]
    with pytest.raises(TypeError):
        osc_message("/a", True)


@pytest.mark.parametrize("bundle", [False, True])
def test_python_osc_server_receives_frames(bundle):
    got, applied = [], []
    dispatcher = Dispatcher()
    dispatcher.map("/VMC/Ext/Blend/Val", lambda addr, name, value: got.append((name, value)))
    dispatcher.map("/VMC/Ext/Blend/Apply", lambda addr: applied.append(len(got)))
    server = BlockingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    server.timeout = 5.0
    rng = np.random.default_rng(2)
    frames = rng.uniform(-0.1, 1.1, (3, 52)).astype(np.float32)
    port = server.server_address[1]

    def serve(n):  # bounded: n datagrams or a 5 s timeout each
        for _ in range(n):
            server.handle_request()

    per_frame = 1 if bundle else 53
    with VMCSender("127.0.0.1", port, name_style="arkit", bundle=bundle) as tx:
        for f in frames:
            t = threading.Thread(target=serve, args=(per_frame,))
            t.start()
            tx.send_frame(0, f)
            t.join(timeout=10)
        assert tx.stats["errors"] == 0 and tx.stats["datagrams"] == 3 * per_frame
    server.server_close()
    assert applied == [52, 104, 156]
    assert [n for n, _ in got] == list(BLENDSHAPE_NAMES) * 3
    np.testing.assert_array_equal(np.array([v for _, v in got], np.float32).reshape(3, 52),
                                  np.clip(frames, 0, 1))
