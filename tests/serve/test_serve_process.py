"""`emotalk-fast serve`, `send` and `health` as a user runs them (the installed console script):
start-up checks, a clean SIGTERM, and two replicas behind nginx's gRPC load balancer."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emotalk_fast.client import ServerError, health, health_status, send
from emotalk_fast.serve import protocol as pb
from helpers import die_with_this_process, espeak_speech, free_port, wait_until

SCRIPT = str(Path(sys.executable).with_name("emotalk-fast"))


def run_cli(*args, timeout=120):
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=timeout)


class ServeProcess:
    """`emotalk-fast serve --random-weights mini` on a free loopback port, ready when healthy."""

    def __init__(self, *extra):
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([SCRIPT, "serve", "--random-weights", "mini", "--port", str(self.port),
                                      "--metrics-port", str(self.metrics_port), "--context-ms", "1000", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=die_with_this_process)
        end = time.monotonic() + 120
        while not health(self.address, timeout=1):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.proc.kill()
                raise AssertionError(f"serve did not start: {self.proc.communicate()}")
            time.sleep(0.2)

    def streams_served(self) -> float:
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("emotalk_streams_total"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    import soundfile

    path = tmp_path_factory.mktemp("serve") / "speech.wav"
    audio = espeak_speech("The server answers every client on its own.", speed=190, rate=22050)
    soundfile.write(str(path), audio, 22050, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def long_speech_wav(speech_wav):
    """The speech four times (about 10 s): a live client that outlasts a few CLI calls."""
    import soundfile

    path = speech_wav.with_name("long_speech.wav")
    soundfile.write(str(path), np.tile(_read(speech_wav), 4), 22050, subtype="PCM_16")
    return path


def test_serve_refuses_bad_arguments_before_loading_the_model(tmp_path):
    t0 = time.monotonic()
    r = run_cli("serve", "--port", free_port())
    assert r.returncode == 2 and "one of the arguments --checkpoint --random-weights is required" in r.stderr
    r = run_cli("serve", "--random-weights", "mini", "--tls-cert", tmp_path / "missing.pem", "--tls-key",
                tmp_path / "k.pem")
    assert r.returncode == 1 and "file not found" in r.stderr
    r = run_cli("serve", "--random-weights", "mini", "--tls-cert", "a.pem")
    assert r.returncode == 1 and "--tls-cert and --tls-key go together" in r.stderr
    assert time.monotonic() - t0 < 60  # no model was loaded for any of them


def _serve_beside_a_busy_port(*flags):
    """`serve --random-weights emotalk` with FLAGS, where "BUSY" stands for a port another socket
    listens on -> (the run, that port, seconds it took)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        t0 = time.monotonic()
        r = run_cli("serve", "--random-weights", "emotalk", *(busy if f == "BUSY" else f for f in flags))
        return r, busy, time.monotonic() - t0


def test_serve_on_a_port_in_use_fails_at_once_in_one_line():
    r, port, elapsed = _serve_beside_a_busy_port("--port", "BUSY")  # the full model: seconds to build
    assert r.returncode == 1, r
    assert r.stderr.strip() == (  # one line: gRPC's own log line is quiet
        f"emotalk-fast serve: error: cannot listen on 127.0.0.1:{port}: the port is in use or not allowed "
        "(--port, --host)")
    assert "Traceback" not in r.stderr and elapsed < 15  # before the model was built


def test_serve_with_its_metrics_port_in_use_names_the_option():
    r, busy, elapsed = _serve_beside_a_busy_port("--port", free_port(), "--metrics-port", "BUSY")
    assert r.returncode == 1, r
    line = r.stderr.strip()
    assert line.startswith(f"emotalk-fast serve: error: cannot serve metrics on 127.0.0.1:{busy}: the port is in use "
                           "or not allowed (--metrics-port, --host)") and "\n" not in line, r.stderr
    assert "Traceback" not in r.stderr and elapsed < 15  # before the model was built


def test_health_is_not_serving_while_the_model_loads(tmp_path):
    """serve listens before it loads: while the release-size model builds, health answers
    NOT_SERVING (exit 1) and streams get UNAVAILABLE (SERVING once loaded: every other test)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen([SCRIPT, "serve", "--random-weights", "emotalk", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_this_process)
    try:
        wait_until(lambda: health_status(address, timeout=1) is not None or proc.poll() is not None, 60.0,
                   poll_s=0.05)
        assert health_status(address, timeout=2) == "NOT_SERVING"  # building takes seconds
        r = run_cli("health", "--server", address)
        assert r.returncode == 1 and "NOT_SERVING" in r.stdout
        with pytest.raises(ServerError) as e:
            send(np.zeros(16000, np.float32), 16000, server=address, timeout=10)
        assert e.value.code == "UNAVAILABLE" and "loading" in e.value.message
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_health_wait_returns_once_serving_and_send_says_no_server(speech_wav):
    """`health --wait` is what a script needs after `serve ... &`; `send` to nothing says so in the
    health command's words (exit 2), not gRPC's."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    r = run_cli("send", speech_wav, "--server", address, "--timeout", "10")
    assert r.returncode == 2 and r.stderr.strip() == f"no server at {address}", r
    proc = subprocess.Popen([SCRIPT, "serve", "--random-weights", "mini", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_this_process)
    try:
        r = run_cli("health", "--server", address, "--wait", "90")
        assert r.returncode == 0 and r.stdout.strip() == f"{address} is SERVING", r
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_a_bare_host_means_the_audio2face_port():
    from emotalk_fast.client import server_address

    assert server_address("127.0.0.1") == "127.0.0.1:52000" and server_address("localhost:9") == "localhost:9"
    assert server_address("::1") == "[::1]:52000" and server_address("[::1]:7") == "[::1]:7"
    assert server_address("[::1]") == "[::1]:52000" and server_address("unix:/tmp/a2f") == "unix:/tmp/a2f"


def live_client(path, address: str, chunk_s: float) -> tuple[threading.Thread, dict]:
    """A client sending `path` at speaking pace in a thread -> (the thread, its result: "ok" with
    the animation or "error" with the ServerError)."""
    result = {}

    def client():
        try:
            result["ok"] = send(path, server=address, realtime=True, chunk_s=chunk_s)
        except ServerError as e:
            result["error"] = e

    t = threading.Thread(target=client)
    t.start()
    return t, result


def test_send_health_and_a_graceful_sigterm(speech_wav, long_speech_wav, tmp_path):
    server = ServeProcess("--shutdown-grace", "20")
    try:
        r = run_cli("health", "--server", server.address)
        assert r.returncode == 0 and "SERVING" in r.stdout
        out = tmp_path / "out.csv"
        r = run_cli("send", speech_wav, "--server", server.address, "-o", out, "--person", 4)
        assert r.returncode == 0, r.stderr
        header = out.read_text().splitlines()[0].split(",")
        assert header[:3] == ["frame", "time", "browDownLeft"] and len(header) == 54
        r = run_cli("send", speech_wav, "--server", server.address, "--person", 30)
        assert r.returncode == 1 and r.stderr.strip().endswith("person must be in 0..23, got 30")
        assert len(r.stderr.strip().splitlines()) == 1
        # a mix of persons, as animate and stream take it
        mixed = tmp_path / "mixed.csv"
        r = run_cli("send", speech_wav, "--server", server.address, "-o", mixed, "--person", "3:0.5,4:0.5")
        assert r.returncode == 0, r.stderr
        curves = [np.loadtxt(p, delimiter=",", skiprows=1)[:, 2:] for p in (out, mixed)]
        assert curves[0].shape == curves[1].shape and not np.allclose(curves[0], curves[1])
        r = run_cli("send", speech_wav, "--server", server.address, "--person", "3:0.5,4:0.6")
        assert r.returncode == 1 and r.stderr.strip().endswith("person weights must sum to 1, got 1.1"), r.stderr

        # SIGTERM while a stream is live: health says NOT_SERVING and new streams get UNAVAILABLE
        # while the port stays open; the live stream finishes; exit 0; then no server at all
        t, result = live_client(long_speech_wav, server.address, chunk_s=0.2)
        time.sleep(1.0)
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: health_status(server.address, timeout=2) == "NOT_SERVING", 10.0, poll_s=0.05)
        r = run_cli("health", "--server", server.address)
        assert r.returncode == 1 and "NOT_SERVING" in r.stdout
        with pytest.raises(ServerError) as e:
            send(speech_wav, server=server.address, timeout=10)
        assert e.value.code == "UNAVAILABLE" and "shutting down" in e.value.message
        t.join(60)
        assert "ok" in result, result
        assert result["ok"].audio == pb.float_to_pcm16(_read(long_speech_wav))
        assert server.proc.wait(30) == 0
        assert health_status(server.address, timeout=2) is None
        r = run_cli("health", "--server", server.address)
        assert r.returncode == 2 and r.stdout.strip() == f"no server at {server.address}"
    finally:
        server.stop()


def test_a_second_sigterm_stops_at_once(long_speech_wav):
    server = ServeProcess("--shutdown-grace", "60")
    try:
        t, result = live_client(long_speech_wav, server.address, chunk_s=0.1)
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: health_status(server.address, timeout=2) == "NOT_SERVING", 10.0, poll_s=0.05)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 1
        assert time.monotonic() - t0 < 10  # not the 60 s grace
        out, err = server.proc.communicate()
        assert "stopped at once by a second signal: 1 live stream(s) cut" in out
        assert "stopping with 1 live stream(s) cut" in err
        t.join(30)
        assert "error" in result and result["error"].code in ("UNAVAILABLE", "CANCELLED"), result
    finally:
        server.stop()


def _read(path):
    import soundfile

    return soundfile.read(str(path), dtype="float32")[0]


# --- scale-out ---------------------------------------------------------------------------------
NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    upstream emotalk {{
        server 127.0.0.1:{a} max_fails=1 fail_timeout=30s;
        server 127.0.0.1:{b} max_fails=1 fail_timeout=30s;
    }}
    server {{
        listen 127.0.0.1:{port} http2;  # (newer nginx also reads `http2 on;`)
        location / {{
            grpc_pass grpc://emotalk;
            grpc_read_timeout 120s;
            grpc_send_timeout 120s;
            client_max_body_size 0;
        }}
    }}
}}
"""


def test_two_replicas_behind_nginx(speech_wav, tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    # PyTorch's float32 encoders: a stream's frames do not depend on what shares its batch (int8
    # encoders, which --encoders auto may choose, move within their tolerance)
    replicas = [ServeProcess("--encoders", "torch"), ServeProcess("--encoders", "torch")]
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, a=replicas[0].port, b=replicas[1].port, port=port))
    proc = subprocess.Popen([nginx, "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=die_with_this_process)
    balancer = f"127.0.0.1:{port}"
    try:
        end = time.monotonic() + 30
        while not health(balancer, timeout=1):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < end, "nginx did not come up"
            time.sleep(0.2)
        audio = _read(speech_wav)
        # streams spread over both replicas
        results = [send(speech_wav, server=balancer) for _ in range(4)]
        assert all(r.audio == pb.float_to_pcm16(audio) for r in results)
        served = [r.streams_served() for r in replicas]
        assert all(s >= 1 for s in served), served

        # kill one replica mid-run: its streams fail, the other's finish untouched
        outcomes, threads = [], []

        def client(i):
            try:
                outcomes.append(("ok", send(speech_wav, server=balancer, realtime=True, chunk_s=0.2)))
            except ServerError as e:
                outcomes.append(("error", e))

        for i in range(4):
            threads.append(threading.Thread(target=client, args=(i,)))
            threads[-1].start()
        wait_until(lambda: sum(r.streams_served() for r in replicas) >= sum(served) + 4, 60.0, poll_s=0.05)
        replicas[0].proc.kill()
        for t in threads:
            t.join(120)
        oks = [r for kind, r in outcomes if kind == "ok"]
        errors = [e for kind, e in outcomes if kind == "error"]
        assert len(outcomes) == 4 and errors and oks, outcomes
        assert all(e.code in ("INTERNAL", "UNAVAILABLE") for e in errors)  # nginx resets the dead upstream's streams
        assert all(r.audio == pb.float_to_pcm16(audio) for r in oks)
        assert replicas[1].streams_served() >= served[1] + len(oks)
        # new streams go to the survivor
        fresh = send(speech_wav, server=balancer)
        assert fresh.num_frames == oks[0].num_frames
        np.testing.assert_allclose(fresh.blendshapes, oks[0].blendshapes, atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(30)
        for r in replicas:
            r.stop()
