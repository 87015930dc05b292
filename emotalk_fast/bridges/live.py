"""Live targets: blendshape frames over UDP to Unreal (Live Link Face) and VMC receivers, paced
on the audio clock.

    from emotalk_fast.bridges.live import LiveLinkSender, VMCSender, stream_live
    stream = animator.stream()
    frames, stats = stream_live(stream, samples, [LiveLinkSender("127.0.0.1"), VMCSender("127.0.0.1")])

A target that is not listening never stops or slows the stream: sockets are non-blocking UDP,
and send errors are counted (`stats`), not raised.
"""
from __future__ import annotations

import queue
import socket
import threading
import time

import numpy as np

from . import livelink, vmc
from ..model.config import BLENDSHAPE_NAMES, FPS, SAMPLE_RATE
from ..errors import InvalidInput


def parse_target(text: str, default_port: int) -> tuple[str, int]:
    """'HOST:PORT', 'HOST', ':PORT' or '[v6addr]:PORT' -> (host, port)."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else port
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            raise InvalidInput(f"bad target {text!r}, expected [ADDRESS]:PORT")
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isdigit():
            raise InvalidInput(f"bad target {text!r}, expected HOST:PORT with a numeric port")
        port = int(p)
    if not 0 < port < 65536:
        raise InvalidInput(f"bad target {text!r}: port {port} outside 1..65535")
    return host or "127.0.0.1", port


class UDPSender:
    """A non-blocking UDP socket to one host:port. Send errors (nobody listening, a full
    buffer, no route) are counted and the last one kept; they never raise."""

    kind = "udp"

    def __init__(self, host: str, port: int):
        try:
            family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as e:
            raise InvalidInput(f"cannot resolve {self.kind} target {host}:{port}: {e}") from None
        self.host, self.port = host, port
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        # connect() fixes the peer once (no lookup per packet) and lets the kernel report a
        # refused port (ICMP unreachable) as an error on a later send, which we count.
        self.sock.connect(addr)
        self.attempted = self.frames = self.datagrams = self.errors = 0  # frames: every datagram went out
        self.last_error: str | None = None

    def _send(self, datagrams: list[bytes]) -> None:
        self.attempted += 1
        failed = False
        for d in datagrams:
            try:
                self.sock.send(d)
                self.datagrams += 1
            except OSError as e:
                failed = True
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e.strerror or e}"
        self.frames += not failed

    def send_frame(self, frame_number: int, values) -> None:
        raise NotImplementedError

    @property
    def stats(self) -> dict:
        return {"target": f"{self.kind} {self.host}:{self.port}", "frames": self.frames,
                "attempted": self.attempted, "datagrams": self.datagrams, "errors": self.errors,
                "last_error": self.last_error}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LiveLinkSender(UDPSender):
    """Frames to Unreal's Live Link Face source (Apple ARKit Face Support), one packet each.

    values: 52 curves in `names` order (clamped to [0, 1] unless clamp=False); head_eyes: an
    optional 9 head/eye rotations. The packet's frame number is the one given to send_frame.
    """

    kind = "livelink"

    def __init__(self, host: str = "127.0.0.1", port: int = livelink.DEFAULT_PORT, subject: str = "EmoTalk",
                 device_id: str | None = None, fps: int = FPS, names=BLENDSHAPE_NAMES, clamp: bool = True):
        super().__init__(host, port)
        self.subject, self.fps, self.names, self.clamp = subject, fps, tuple(names), clamp
        self.device_id = livelink.default_device_id(subject) if device_id is None else device_id
        livelink.livelink_index(self.names)  # validate once

    def send_frame(self, frame_number: int, values, head_eyes=None) -> None:
        v = livelink.to_livelink(values, self.names, head_eyes, self.clamp)
        self._send([livelink.encode_packet(v, frame_number, self.subject, self.device_id, self.fps)])


class VMCSender(UDPSender):
    """Frames to a VMC protocol receiver: 52 `/VMC/Ext/Blend/Val` then `/VMC/Ext/Blend/Apply`.

    name_style: 'perfect_sync' (PascalCase, VSeeFace's Perfect Sync clips) or 'arkit' (camelCase).
    bundle: one OSC bundle per frame instead of one datagram per message.
    """

    kind = "vmc"

    def __init__(self, host: str = "127.0.0.1", port: int = vmc.DEFAULT_PORT, name_style: str = "perfect_sync",
                 bundle: bool = False, names=BLENDSHAPE_NAMES, clamp: bool = True):
        self.osc_names = vmc.vmc_names(name_style, names)  # validate before opening a socket
        super().__init__(host, port)
        self.bundle, self.clamp = bundle, clamp

    def send_frame(self, frame_number: int, values) -> None:
        v = np.asarray(values, np.float32)
        messages = vmc.frame_messages(np.clip(v, 0.0, 1.0) if self.clamp else v, self.osc_names)
        self._send([vmc.osc_bundle(messages)] if self.bundle else messages)


class PacedSender:
    """Sends frame n to every target at `t0 + delay_s + n / fps` from a background thread, so
    frames leave at 30 fps on the audio clock however bursty their computation is.

    t0 is the instant audio sample 0 was spoken (`start()`); delay_s must cover the stream's
    latency plus compute, and a frame that is ready only after its time is sent at once and
    counted as late. Frame numbers in the packets are n + frame_offset.
    """

    def __init__(self, targets, fps: int = FPS, delay_s: float = 0.4, frame_offset: int = 0):
        self.targets = list(targets)
        if not self.targets:
            raise InvalidInput("PacedSender needs at least one target")
        if not delay_s >= 0:
            raise InvalidInput(f"delay_s must be >= 0, got {delay_s!r}")
        self.fps, self.delay_s, self.frame_offset = fps, float(delay_s), frame_offset
        self.submitted = self.sent = self.late = 0
        self.max_late_s = 0.0
        self.t0: float | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="emotalk-live", daemon=True)

    def start(self, t0: float | None = None) -> "PacedSender":
        self.t0 = time.perf_counter() if t0 is None else t0
        self._thread.start()
        return self

    def submit(self, frames) -> None:
        """Queue frames [k, 52] that follow the ones already submitted."""
        if self.t0 is None:
            raise RuntimeError("call start() before submit()")
        for row in np.asarray(frames, np.float32).reshape(-1, 52):
            self._queue.put((self.submitted, row))
            self.submitted += 1

    def due(self, n: int) -> float:
        return self.t0 + self.delay_s + n / self.fps

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            n, row = item
            wait = self.due(n) - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif -wait > 0.5 / self.fps:
                self.late += 1
                self.max_late_s = max(self.max_late_s, -wait)
            for t in self.targets:
                t.send_frame(n + self.frame_offset, row)
            self.sent += 1

    def close(self) -> None:
        """Send what is queued (on schedule), then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            # bounded: the queued frames' schedule, plus a margin
            remaining = max(0.0, self.due(self.submitted) - time.perf_counter())
            self._thread.join(timeout=remaining + 5.0)

    @property
    def stats(self) -> dict:
        return {"frames": self.sent, "late": self.late, "max_late_ms": 1000 * self.max_late_s,
                "delay_ms": 1000 * self.delay_s, "targets": [t.stats for t in self.targets]}

    def __enter__(self):
        return self.start() if self.t0 is None else self

    def __exit__(self, *exc):
        self.close()


def stream_live(stream, samples: np.ndarray, targets, realtime: bool = True, slack_s: float = 0.1,
                delay_s: float | None = None, frame_offset: int = 0, on_hop=None):
    """Play `samples` through an AnimationStream (see stream_eval.play) and send every frame to
    `targets` at 30 fps on the audio clock. Returns (frames [T, 52], stats).

    delay_s: seconds from a frame's audio instant to its sending; default the stream's
    algorithmic latency plus `slack_s` for compute.
    """
    from ..streaming.stream import play

    if delay_s is None:
        delay_s = stream.latency_ms / 1000 + slack_s
    paced = PacedSender(targets, FPS, delay_s, frame_offset)

    def hop(i, frames, compute_s, wall_s):
        paced.submit(frames)
        if on_hop is not None:
            on_hop(i, frames, compute_s, wall_s)

    paced.start()
    try:
        frames = play(stream, samples, stream.settings.hop_ms * SAMPLE_RATE // 1000, realtime=realtime, on_hop=hop)
        paced.submit(frames[paced.submitted:])  # the frames flush() returned
    finally:
        paced.close()
    return frames, {**paced.stats, "t0": paced.t0}


def make_targets(livelink_target: str | None = None, vmc_target: str | None = None, subject: str = "EmoTalk",
                 vmc_names: str = "perfect_sync") -> list[UDPSender]:
    """Senders from 'HOST:PORT' texts (the CLI's --livelink / --vmc)."""
    targets: list[UDPSender] = []
    if livelink_target:
        targets.append(LiveLinkSender(*parse_target(livelink_target, livelink.DEFAULT_PORT), subject=subject))
    if vmc_target:
        targets.append(VMCSender(*parse_target(vmc_target, vmc.DEFAULT_PORT), name_style=vmc_names))
    return targets


def describe(stats: dict) -> str:
    """One line per target, and the pacing."""
    lines = [f"paced {stats['frames']} frames at {FPS} fps, {stats['delay_ms']:.0f} ms after their audio; "
             f"{stats['late']} late (max {stats['max_late_ms']:.0f} ms)"]
    for t in stats["targets"]:
        err = f"; last: {t['last_error']}" if t["errors"] else ""
        lines.append(f"  {t['target']}: {t['frames']} of {t['attempted']} frames sent ({t['datagrams']} datagrams), "
                     f"{t['errors']} send errors{err}")
    return "\n".join(lines)
