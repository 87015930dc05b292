"""`emotalk-fast serve` under load, in the style of NVIDIA's nim_performance_test.py.

    python benchmarks/serve_load.py --preset mini --clients 1,4,8 --seconds 5,10,20
    python benchmarks/serve_load.py --preset emotalk --dtype bfloat16 --clients 1,2 --seconds 5,10
    python benchmarks/serve_load.py --server 10.0.0.5:52000 --clients 16     # a server you run

Starts `emotalk-fast serve --random-weights PRESET` on a free loopback port (random weights:
speed does not depend on them) unless --server is given. For each clip length and client
count, N clients start together, each sending its clip (espeak-ng speech at 16 kHz, 16-bit) in
1-second messages as fast as the server takes them (as NVIDIA's sample client does), or paced
as spoken with --realtime. Per stream:

- first-packet latency: from the first audio message sent to the first animation data back
  (NVIDIA's tool times the first message of any kind; our header reply comes at once, so that
  would measure nothing);
- output fps: frames received / seconds from the first to the last animation data.

Reported over all streams of a case: latency p50 and p99, fps p1 and median.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emotalk_fast.client import health, send  # noqa: E402
from emotalk_fast.tools.measure import device_name, generated_speech, versions  # noqa: E402
from emotalk_fast.serve.protocol import float_to_pcm16  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(preset: str, dtype: str | None, device: str, max_streams: int,
                 hop_ms: str | None = None, extra: tuple = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("emotalk-fast")), "serve", "--random-weights", preset,
           "--port", str(port), "--max-streams", str(max_streams), "--device", device]
    if dtype:
        cmd += ["--dtype", dtype]
    if hop_ms:
        cmd += ["--hop-ms", hop_ms]
    cmd += list(extra)
    # the server's own lines (what its settings hold, the hop it chose) go to a file: a pipe nobody
    # reads until the end could fill and stall it
    log = tempfile.NamedTemporaryFile("w+", prefix="serve_load_", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log.name
    address = f"127.0.0.1:{port}"
    end = time.monotonic() + 600
    while not health(address, timeout=1):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise RuntimeError(f"serve did not start: {Path(log.name).read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, address


def server_says(proc) -> list[str]:
    """The server's start-up lines about its settings and what they hold."""
    return [line for line in Path(proc.log_path).read_text().splitlines()
            if line.startswith("serving") or "holds" in line or "keeps up" in line or "auto chose" in line]


def one_stream(address: str, pcm: np.ndarray, person: int, realtime: bool, chunk_s: float = 1.0) -> dict:
    t0 = time.perf_counter()
    result = send(pcm, 16000, server=address, person=person, chunk_s=chunk_s, realtime=realtime, timeout=3600)
    total = time.perf_counter() - t0
    return {"first_ms": 1000 * result.first_reply_s, "frames": result.num_frames, "total_s": total,
            "fps": result.num_frames / max(total - result.first_reply_s, 1e-9),
            "after_end_s": total - len(pcm) / 16000}  # paced as spoken: the last frame after the audio ends


def run_case(address: str, clients: int, seconds: float, realtime: bool, chunk_s: float = 1.0) -> dict:
    pcm = np.frombuffer(float_to_pcm16(generated_speech(seconds)), "<i2")
    rows, errors = [None] * clients, []
    barrier = threading.Barrier(clients)

    def client(i):
        barrier.wait()
        try:
            rows[i] = one_stream(address, pcm, i % 24, realtime, chunk_s)
        except Exception as e:  # noqa: BLE001 - counted and shown
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [r for r in rows if r is not None]
    first = np.array([r["first_ms"] for r in done])
    fps = np.array([r["fps"] for r in done])
    return {"clients": clients, "audio_s": seconds, "realtime": realtime, "ok": len(done), "errors": errors[:3],
            "first_ms_p50": float(np.percentile(first, 50)) if done else None,
            "first_ms_p99": float(np.percentile(first, 99)) if done else None,
            "fps_p1": float(np.percentile(fps, 1)) if done else None,
            "fps_median": float(np.median(fps)) if done else None,
            "after_end_s_max": max(r["after_end_s"] for r in done) if done else None}


def markdown(rows: list[dict]) -> str:
    realtime = any(r["realtime"] for r in rows)
    after = " last frame after the audio ends (worst) |" if realtime else ""
    lines = [f"| clients | audio | first packet p50 | p99 | output fps p1 | median |{after} ok |",
             "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if realtime else "")]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['clients']} | {r['audio_s']:g} s | - | - | - | - |{' - |' if realtime else ''} "
                         f"0 ({r['errors'][0]}) |")
            continue
        tail = f" {r['after_end_s_max']:.1f} s |" if realtime else ""
        lines.append(f"| {r['clients']} | {r['audio_s']:g} s | {r['first_ms_p50']:.0f} ms | {r['first_ms_p99']:.0f} ms "
                     f"| {r['fps_p1']:.1f} | {r['fps_median']:.1f} |{tail} {r['ok']}/{r['clients']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    p.add_argument("--preset", default="mini", help="model size of the server this starts: mini or emotalk")
    p.add_argument("--dtype", default=None, help="float32 (default) or bfloat16")
    p.add_argument("--device", default="auto")
    p.add_argument("--clients", default="1,4,8", help="concurrent clients, comma-separated")
    p.add_argument("--seconds", default="5,10,20", help="clip lengths, comma-separated")
    p.add_argument("--realtime", action="store_true", help="clients send audio no faster than spoken")
    p.add_argument("--chunk-ms", type=int, default=1000, help="audio per message (NVIDIA's client: 1000)")
    p.add_argument("--hop-ms", default=None, help="the server's --hop-ms (default its own: auto)")
    p.add_argument("--live-streams", default=None, help="the server's --live-streams: the streams its auto hop "
                                                        "must hold (default its own, 1)")
    p.add_argument("--encoders", default="auto",
                   help="the server's --encoders (default its own, auto; torch, onnx, int8 or openvino)")
    p.add_argument("--encoding", default=None, help="the server's --encoding (default its own, incremental; or "
                                                    "windowed)")
    p.add_argument("--context-ms", default=None, help="the server's --context-ms (default its own, 2000)")
    p.add_argument("--threads", default=None, help="the server's --threads (default torch's, one per core)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    clients = [int(x) for x in args.clients.split(",")]
    seconds = [float(x) for x in args.seconds.split(",")]
    proc = None
    address = args.server
    if address is None:
        print(f"starting serve --random-weights {args.preset} ...", file=sys.stderr, flush=True)
        extra = ("--encoders", args.encoders) + \
            (("--context-ms", args.context_ms) if args.context_ms else ()) + \
            (("--threads", args.threads) if args.threads else ()) + \
            (("--encoding", args.encoding) if args.encoding else ()) + \
            (("--live-streams", args.live_streams) if args.live_streams else ())
        proc, address = start_server(args.preset, args.dtype, args.device, max(clients), args.hop_ms, extra)
    try:
        rows = []
        for s in seconds:
            for n in clients:
                print(f"[serve_load] {n} clients x {s:g} s ...", file=sys.stderr, flush=True)
                rows.append(run_case(address, n, s, args.realtime, args.chunk_ms / 1000))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    if args.server:
        where = f"a server at {address}"
    else:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              "cpu" if args.device == "auto" else args.device)
        where = f"{args.preset} {args.dtype or 'float32'}{'' if args.encoders == 'torch' else f' with {args.encoders} encoders'} on " \
                f"{device_name(device)}"
    v = versions()
    print(f"{where}; torch {v['torch']}, python {v['python']}; clients and server on this machine; "
          f"{'real-time' if args.realtime else 'as-fast-as-possible'} clients, {args.chunk_ms} ms messages"
          f"{f', server --hop-ms {args.hop_ms}' if args.hop_ms else ''}"
          f"{f', --context-ms {args.context_ms}' if args.context_ms else ''}"
          f"{f', --threads {args.threads}' if args.threads else ''}"
          f"{f', --encoding {args.encoding}' if args.encoding else ''}"
          f"{f', --live-streams {args.live_streams}' if args.live_streams else ''}")
    print(markdown(rows))
    if proc is not None:
        print("\nThe server said:\n" + "\n".join(f"    {line}" for line in server_says(proc)))
    if args.json:
        Path(args.json).write_text(json.dumps({"server": where, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
