"""Live streaming to loopback receivers: paced at 30 fps on the audio clock without drift, with
consecutive frame numbers; a target that is not listening neither stops nor slows the stream."""
import socket
import threading
import time

import numpy as np
import pytest
import torch

from emotalk_fast import Animator
from emotalk_fast.bridges.live import LiveLinkSender, PacedSender, VMCSender, parse_target, stream_live
from emotalk_fast.bridges.livelink import decode_packet, to_livelink


@pytest.fixture(scope="module")
def animator():
    # One intra-op thread: on a shared, oversubscribed CPU two OpenMP threads make a hop's
    # compute swing from 10 ms to a second, which would test the machine, not the pacing.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    anim = Animator.from_config("tiny", seed=3, device="cpu")
    stream = anim.stream()  # warm up, so the first hop's compute is not a one-off outlier
    stream.push(np.zeros(16000, np.float32))
    stream.flush()
    yield anim
    torch.set_num_threads(threads)


def voiced(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 140 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


class Receiver:
    """A loopback UDP socket read on a thread; records (arrival time, datagram). Bounded: stops
    when asked, polling every 50 ms."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.got, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.got.append((time.perf_counter(), data))

    def close(self):
        time.sleep(0.1)
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def test_parse_target():
    assert parse_target("10.0.0.2:7000", 11111) == ("10.0.0.2", 7000)
    assert parse_target("studio-pc", 11111) == ("studio-pc", 11111)
    assert parse_target(":39540", 39539) == ("127.0.0.1", 39540)
    assert parse_target("[::1]:9000", 1) == ("::1", 9000)
    for bad in ("host:port", "host:0", "[::1]x"):
        with pytest.raises(ValueError, match="bad target"):
            parse_target(bad, 11111)


class Metronome(threading.Thread):
    """A plain sleep-until-deadline loop at 30 fps beside the pacer: how late this machine wakes
    a thread right now, the reference the pacer's timing is held to."""

    def __init__(self, ticks: int):
        super().__init__(daemon=True)
        self.ticks, self.lateness = ticks, []

    def run(self):
        t0 = time.perf_counter()
        for k in range(self.ticks):
            time.sleep(max(0.0, t0 + k / 30 - time.perf_counter()))
            self.lateness.append(time.perf_counter() - t0 - k / 30)


def test_live_stream_is_paced_without_drift(animator):
    speech = voiced(2.0)
    ll_rx, vmc_rx = Receiver(), Receiver()
    metronome = Metronome(90)
    try:
        targets = [LiveLinkSender("127.0.0.1", ll_rx.port), VMCSender("127.0.0.1", vmc_rx.port)]
        stream = animator.stream(context_ms=1000)
        metronome.start()
        frames, stats = stream_live(stream, speech, targets, realtime=True, slack_s=0.5)
        metronome.join(10)
    finally:
        ll_rx.close()
        vmc_rx.close()
    for t in targets:
        t.close()
    n = len(frames)
    assert n == 60 and stats["frames"] == n
    packets = [(t, decode_packet(d)) for t, d in ll_rx.got]
    assert [p.frame_number for _, p in packets] == list(range(n))  # consecutive, none lost
    np.testing.assert_array_equal(np.stack([p.values for _, p in packets]), to_livelink(frames))
    assert sum(d.startswith(b"/VMC/Ext/Blend/Apply") for _, d in vmc_rx.got) == n
    assert all(s["errors"] == 0 for s in stats["targets"])

    # frame k leaves at t0 + delay + k / 30: never early, no drift across the clip (the first and
    # last 20 frames' median lateness, robust to a busy machine's stalls), and no later than a
    # plain sleep loop running beside it, plus a margin
    arrival = np.array([t for t, _ in packets]) - stats["t0"] - stats["delay_ms"] / 1000
    lateness = arrival - np.arange(n) / 30
    drift = np.median(lateness[-20:]) - np.median(lateness[:20])
    reference = np.array(metronome.lateness)
    print(f"lateness median {1000 * np.median(lateness):.1f} ms, max {1000 * lateness.max():.1f} ms; "
          f"{stats['late']} late; drift {1000 * drift:.1f} ms; a sleep loop beside it: median "
          f"{1000 * np.median(reference):.1f} ms, max {1000 * reference.max():.1f} ms")
    assert lateness.min() > -0.002, "a frame left before its time"
    reference_drift = abs(np.median(reference[-20:]) - np.median(reference[:20]))
    assert abs(drift) < 0.020 + reference_drift, f"drift {1000 * drift:.1f} ms"
    assert np.median(lateness) < 0.010 + np.median(reference)
    assert lateness.max() < 0.100 + reference.max()


def test_target_not_listening_neither_stops_nor_slows(animator):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    speech = voiced(1.0)
    with LiveLinkSender("127.0.0.1", dead_port) as dead, VMCSender("127.0.0.1", dead_port) as dead_vmc:
        t0 = time.perf_counter()
        frames, stats = stream_live(animator.stream(), speech, [dead, dead_vmc], realtime=False, delay_s=0.2)
        elapsed = time.perf_counter() - t0
    assert stats["frames"] == len(frames) == 30
    # paced, not stalled: the last frame is due at 0.2 + 29/30 s
    assert 0.2 + 29 / 30 - 0.01 < elapsed < 0.2 + 29 / 30 + 0.5
    ll, v = stats["targets"]
    assert ll["attempted"] == v["attempted"] == 30
    # only frames whose datagrams all went out count as sent; refused ones do not
    assert ll["frames"] == ll["datagrams"] < 30 and v["frames"] <= 30
    # loopback answers a closed port with ICMP unreachable; connected sockets report it
    assert ll["errors"] > 0 and "Refused" in ll["last_error"], ll
    assert ll["errors"] + ll["datagrams"] == 30 and v["errors"] + v["datagrams"] == 30 * 53


def test_paced_sender_validates():
    with pytest.raises(ValueError, match="at least one target"):
        PacedSender([])
    with LiveLinkSender("127.0.0.1", 9) as t:
        with pytest.raises(RuntimeError, match="start"):
            PacedSender([t]).submit(np.zeros((1, 52)))


def test_cli_stream_to_livelink_and_vmc(tmp_path):
    import os
    import subprocess
    import sys

    import soundfile

    soundfile.write(tmp_path / "speech.wav", voiced(1.0), 16000)
    ll_rx, vmc_rx = Receiver(), Receiver()
    try:
        r = subprocess.run([sys.executable, "-m", "emotalk_fast.cli", "stream", str(tmp_path / "speech.wav"),
                            "--realtime", "--livelink", f"127.0.0.1:{ll_rx.port}", "--vmc", f"127.0.0.1:{vmc_rx.port}",
                            "--vmc-names", "arkit", "--subject", "Face", "--random-weights", "tiny", "--device", "cpu"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        ll_rx.close()
        vmc_rx.close()
    assert r.returncode == 0, r.stderr
    assert "paced 30 frames at 30 fps" in r.stdout and "30 of 30 frames sent" in r.stdout, r.stdout
    assert "0 send errors" in r.stdout, r.stdout
    packets = [decode_packet(d) for _, d in ll_rx.got]
    assert [p.frame_number for p in packets] == list(range(30)) and packets[0].subject == "Face"
    assert sum(d.startswith(b"/VMC/Ext/Blend/Apply") for _, d in vmc_rx.got) == 30
    assert any(b"jawOpen" in d for _, d in vmc_rx.got)


def test_cli_rejects_bad_target(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "emotalk_fast.cli", "stream", "x.wav", "--livelink", "host:port",
                        "--random-weights", "tiny"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "bad target" in r.stderr


def test_the_guide_quotes_the_summary_as_printed():
    """docs/game-engines.md shows the end-of-stream summary a user reads: it is describe()'s."""
    from pathlib import Path

    from emotalk_fast.bridges.live import describe

    stats = {"frames": 90, "delay_ms": 35.2, "late": 0, "max_late_ms": 0.0,
             "targets": [{"target": "livelink 127.0.0.1:11111", "frames": 90, "attempted": 90, "datagrams": 90,
                          "errors": 0, "last_error": None}]}
    guide = (Path(__file__).resolve().parents[2] / "docs" / "game-engines.md").read_text()
    assert f"```text\n{describe(stats)}\n```" in guide
