"""Hostile and unusual clients against `emotalk-fast serve --random-weights mini` on loopback:
the four reproductions of the service-hardening issue, with the server's memory before and after.

    python benchmarks/serve_probe.py
    python benchmarks/serve_probe.py --storm 800 --json probe.json

Cases (each against one fresh server process, 127.0.0.1 only, every client bounded in time):
  storm      N clients send a header and cancel at a random instant (0-20 ms), 8 at a time; then
             --max-streams normal streams at once: how many succeed, and the live-streams metric.
  emotions   messages of 40,000 input emotions and no audio: the server's memory, the outcome.
  odd-rate   a 4001 Hz client sends one 1 MiB chunk while a normal 2 s, 16 kHz stream runs:
             the normal stream's time beside it against alone, the server's memory.
  small      10 s of speech in 10 ms chunks, as fast as the client can send, alone and beside
             two streams sending 1 s chunks: the time to the last frame.
`--pythonpath DIR` runs the server from another checkout (to measure a before).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from emotalk_fast.io.audio import espeak_speech
from emotalk_fast.client import health, stream_header
from emotalk_fast.serve import protocol as pb
from serve_load import free_port  # this folder (the script's own): one free-port helper for the benchmarks

END = pb.AudioStream(end_of_audio=pb.AudioStream.EndOfAudio())
MAX_STREAMS = 8


class Server:
    def __init__(self, pythonpath: str | None, *extra: str):
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emotalk_fast", "serve", "--random-weights", "mini", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), "--max-streams", str(MAX_STREAMS), "--context-ms", "1000",
             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 180
        while not health(self.address, timeout=1):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.proc.kill()
                raise RuntimeError(f"serve did not start: {self.proc.communicate()[1][-2000:]}")
            time.sleep(0.3)

    def rss_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def live_streams(self) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("emotalk_live_streams"))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)


def rpc(address: str):
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 4 << 20)])
    return channel, channel.stream_stream(pb.PROCESS_AUDIO_STREAM,
                                          request_serializer=pb.AudioStream.SerializeToString,
                                          response_deserializer=pb.AnimationDataStream.FromString)


def normal_stream(address: str, pcm: bytes, rate: int, chunk_s: float, timeout: float = 300) -> tuple[str, float]:
    """(outcome, seconds to the last reply) of one stream sent as fast as the client can."""
    chunk = 2 * max(1, round(chunk_s * rate))
    messages = [stream_header(rate)] + [pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(
        audio_buffer=pcm[i : i + chunk])) for i in range(0, len(pcm), chunk)] + [END]
    channel, call = rpc(address)
    t0 = time.perf_counter()
    try:
        replies = list(call(iter(messages), timeout=timeout))
        status = replies[-1].status if replies and replies[-1].HasField("status") else None
        outcome = "SUCCESS" if status is not None and status.code == pb.Status.SUCCESS else \
            f"ERROR {status.message if status is not None else 'no status'}"
    except grpc.RpcError as e:
        outcome = f"{e.code().name} {e.details()}"
    finally:
        channel.close()
    return outcome, time.perf_counter() - t0


def storm(address: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def one(delay: float) -> None:
        channel, call = rpc(address)
        gate = threading.Event()

        def requests():
            yield stream_header(16000)
            gate.wait(5)

        try:
            replies = call(requests(), timeout=10)
            time.sleep(delay)
            replies.cancel()
        finally:
            gate.set()
            channel.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, [rng.uniform(0, 0.02) for _ in range(n)]))


def case_storm(args, speech16k: bytes) -> dict:
    server = Server(args.pythonpath)
    try:
        t0 = time.perf_counter()
        storm(server.address, args.storm)
        storm_s = time.perf_counter() - t0
        time.sleep(1.0)
        live_after = server.live_streams()
        with ThreadPoolExecutor(MAX_STREAMS) as pool:
            outcomes = list(pool.map(lambda _: normal_stream(server.address, speech16k, 16000, 1.0)[0],
                                     range(MAX_STREAMS)))
        return {"clients": args.storm, "storm_s": round(storm_s, 1), "live_streams_after_storm": live_after,
                "normal_streams_ok": sum(o == "SUCCESS" for o in outcomes), "normal_streams": MAX_STREAMS,
                "outcomes": sorted(set(outcomes))}
    finally:
        server.stop()


def case_emotions(args, speech16k: bytes) -> dict:
    server = Server(args.pythonpath)
    try:
        before = server.rss_mb()
        emotion = pb.EmotionWithTimeCode(time_code=0.0, emotion={"joy": 1.0})
        flood = pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(emotions=[emotion] * 40_000))
        messages = [stream_header(16000)] + [flood] * args.flood + [
            pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(audio_buffer=speech16k[:64000])), END]
        channel, call = rpc(server.address)
        peak = before
        try:
            replies = call(iter(messages), timeout=120)
            outcome = None
            for reply in replies:
                peak = max(peak, server.rss_mb())
                if reply.HasField("status"):
                    outcome = "SUCCESS" if reply.status.code == pb.Status.SUCCESS else f"ERROR {reply.status.message}"
        except grpc.RpcError as e:
            outcome = f"{e.code().name} {e.details()}"
        finally:
            channel.close()
        peak = max(peak, server.rss_mb())
        return {"messages": args.flood, "emotions_per_message": 40_000, "rss_before_mb": round(before),
                "rss_peak_mb": round(peak), "outcome": outcome}
    finally:
        server.stop()


def case_odd_rate(args, speech16k: bytes) -> dict:
    server = Server(args.pythonpath)
    try:
        normal = speech16k[: 2 * 32000]  # 2 s
        alone = normal_stream(server.address, normal, 16000, 0.1)[1]
        before = server.rss_mb()
        peak = [before]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], server.rss_mb())
                time.sleep(0.05)

        def odd():
            pcm = (np.random.default_rng(0).standard_normal(1 << 19) * 3000).astype("<i2").tobytes()  # 1 MiB
            return normal_stream(server.address, pcm, 4001, (1 << 19) / 4001 + 1, timeout=300)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(2) as pool:
            odd_future = pool.submit(odd)
            time.sleep(0.2)
            beside = normal_stream(server.address, normal, 16000, 0.1)
            odd_outcome = odd_future.result()
        stop.set()
        watcher.join()
        return {"normal_alone_s": round(alone, 2), "normal_beside_odd_s": round(beside[1], 2),
                "normal_outcome": beside[0], "odd_outcome": odd_outcome[0], "odd_s": round(odd_outcome[1], 2),
                "rss_before_mb": round(before), "rss_peak_mb": round(peak[0])}
    finally:
        server.stop()


def case_small_chunks(args, speech16k: bytes) -> dict:
    server = Server(args.pythonpath)
    try:
        pcm = (speech16k * (1 + 320000 // len(speech16k)))[: 2 * 160000]  # 10 s
        alone = normal_stream(server.address, pcm, 16000, 0.01)
        one_s = normal_stream(server.address, pcm, 16000, 1.0)
        with ThreadPoolExecutor(3) as pool:
            busy = [pool.submit(normal_stream, server.address, pcm * 2, 16000, 1.0) for _ in range(2)]
            time.sleep(0.5)
            beside = normal_stream(server.address, pcm, 16000, 0.01)
            [b.result() for b in busy]
        return {"audio_s": 10, "chunk_10ms_alone_s": round(alone[1], 1), "chunk_1s_alone_s": round(one_s[1], 1),
                "chunk_10ms_beside_two_busy_s": round(beside[1], 1), "outcomes": sorted({alone[0], beside[0]})}
    finally:
        server.stop()


CASES = {"storm": case_storm, "emotions": case_emotions, "odd-rate": case_odd_rate, "small": case_small_chunks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    p.add_argument("--storm", type=int, default=400, help="header-then-cancel clients (default 400)")
    p.add_argument("--flood", type=int, default=50, help="messages of 40,000 emotions (default 50)")
    p.add_argument("--pythonpath", help="run the server from this checkout")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    speech16k = pb.float_to_pcm16(espeak_speech("Hostile clients must never stall the others, not even once.",
                                                speed=170))
    results = {}
    for name in args.cases.split(","):
        results[name] = CASES[name](args, speech16k)
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
