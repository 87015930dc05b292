"""The service against hostile and unusual clients, over loopback and bounded in time: cancels at
random instants leak no slot, floods of input emotions end their own stream, odd sample rates
with huge chunks stall no one, 10 ms chunks keep up with 1 s chunks, the idle timer measures the
client's silence (not the server's backlog, not empty messages), bytes that are not an
AudioStream get INVALID_ARGUMENT, replies stay under the size limit, a client that never reads
is cut, each abnormal end is logged, and so is a stream that falls behind real time. The mini
model with random weights."""
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from emotalk_fast import Animator
from emotalk_fast.io.audio import resample
from emotalk_fast.client import send, stream_header
from emotalk_fast.serve import protocol as pb
from emotalk_fast.serve.server import A2FServer, ServeSettings
from helpers import espeak_speech, wait_until

TOL = 1e-5
STREAM = dict(hop_ms=100, lookahead_ms=200, context_ms=1000)
END = pb.AudioStream(end_of_audio=pb.AudioStream.EndOfAudio())


@pytest.fixture(scope="module")
def animator():
    return Animator.from_config("mini", seed=5, device="cpu")


@pytest.fixture(scope="module")
def speech():
    return espeak_speech("A hostile client must never stall the others.", speed=190)


def start(animator, max_streams=4, **settings) -> A2FServer:
    return A2FServer(animator.engine(max_streams=max_streams, **STREAM), ServeSettings(port=0, **settings)).start()


def rpc(channel, raw=False):
    return channel.stream_stream(pb.PROCESS_AUDIO_STREAM,
                                 request_serializer=(lambda b: b) if raw else pb.AudioStream.SerializeToString,
                                 response_deserializer=pb.AnimationDataStream.FromString)


def chunks(pcm: bytes, chunk_bytes: int) -> list:
    return [pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(audio_buffer=pcm[i : i + chunk_bytes]))
            for i in range(0, len(pcm), chunk_bytes)]


def call(address, messages, timeout=120):
    with grpc.insecure_channel(address) as channel:
        return list(rpc(channel)(iter(messages), timeout=timeout))


def frames_of(replies) -> np.ndarray:
    return np.array([f.values for r in replies if r.HasField("animation_data")
                     for f in r.animation_data.skel_animation.blend_shape_weights], np.float32)


def reference(animator, pcm: bytes, rate: int) -> np.ndarray:
    stream = animator.stream(sample_rate=rate, **STREAM)
    return np.concatenate([stream.push(pb.pcm16_to_float(pcm)), stream.flush()])


def test_a_storm_of_header_then_cancel_leaks_no_slot(animator, speech):
    """Hundreds of clients send a header and cancel at a random instant (before, during and
    after the engine opens their stream); then every slot opens for a normal stream."""
    server = start(animator, max_streams=4)
    rng = random.Random(0)

    def header_then_cancel(delay):
        gate = threading.Event()

        def requests():
            yield stream_header(16000)
            gate.wait(5)

        with grpc.insecure_channel(server.address) as channel:
            replies = rpc(channel)(requests(), timeout=10)
            time.sleep(delay)
            replies.cancel()
            gate.set()

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(header_then_cancel, [rng.uniform(0, 0.02) for _ in range(300)]))
        wait_until(lambda: server.service.worker.live_streams == 0 and server.service.sessions == 0, 20.0)
        assert server.metrics.registry.get_sample_value("emotalk_live_streams") == 0
        pcm = pb.float_to_pcm16(speech)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: send(pcm_int16(pcm), 16000, server=server.address, timeout=120),
                                    range(4)))
        assert all(r.num_frames > 0 for r in results)
        assert server.metrics.registry.get_sample_value("emotalk_streams_total") >= 4
    finally:
        server.stop(grace=1)


def pcm_int16(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2")


def test_a_flood_of_input_emotions_ends_its_own_stream(animator, speech, caplog):
    server = start(animator)
    emotion = pb.EmotionWithTimeCode(time_code=0.0, emotion={"joy": 1.0})
    try:
        # one message of 40,000 emotions and no audio
        flood = pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(emotions=[emotion] * 40_000))
        with caplog.at_level(logging.WARNING, logger="emotalk_fast.serve"):
            with pytest.raises(grpc.RpcError) as e:
                call(server.address, [stream_header(16000), flood, END])
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "input emotions" in e.value.details()
            wait_until(lambda: any("ended: INVALID_ARGUMENT" in r.message for r in caplog.records), 5.0)
        line = next(r.message for r in caplog.records if "ended: INVALID_ARGUMENT" in r.message)
        assert "stream from ipv4:127.0.0.1:" in line and "input emotions" in line
        # many small emotion-only messages: the total is bounded too
        small = pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(emotions=[emotion] * 500))
        with pytest.raises(grpc.RpcError) as e:
            call(server.address, [stream_header(16000)] + [small] * 200 + [END])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # emotions beside their audio are echoed once, as before
        pcm = pb.float_to_pcm16(speech)
        messages = chunks(pcm, 3200)
        for m in messages:
            m.audio_with_emotion.emotions.extend([emotion] * 100)
        replies = call(server.address, [stream_header(16000), *messages, END])
        assert replies[-1].status.code == pb.Status.SUCCESS
        echoed = sum(len(pb.unpack_any(r.animation_data.metadata[pb.EMOTION_AGGREGATE_KEY],
                                       pb.EmotionAggregate).input_emotions)
                     for r in replies if r.HasField("animation_data"))
        assert echoed == 100 * len(messages)
        wait_until(lambda: server.service.worker.live_streams == 0, 10.0)
    finally:
        server.stop(grace=1)


def test_an_odd_rate_with_a_huge_chunk_stalls_no_one(animator, speech):
    """A 4001 Hz client sends one 1 MiB chunk (131 s of audio) while a normal 16 kHz stream runs:
    the normal stream gets exactly its frames, about as fast as alone."""
    server = start(animator)
    normal = pb.float_to_pcm16(speech)
    try:
        t0 = time.perf_counter()
        alone = call(server.address, [stream_header(16000), *chunks(normal, 3200), END])
        alone_s = time.perf_counter() - t0
        odd_pcm = pb.float_to_pcm16(np.tile(resample(speech, 16000, 4001), 200)[: 1 << 19])
        with grpc.insecure_channel(server.address) as channel:
            gate = threading.Event()

            def odd_requests():
                yield stream_header(4001)
                yield pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(audio_buffer=odd_pcm))
                gate.wait(120)

            odd = rpc(channel)(odd_requests(), timeout=120)
            assert odd.next().HasField("animation_data_stream_header")
            time.sleep(0.3)
            t0 = time.perf_counter()
            beside = call(server.address, [stream_header(16000), *chunks(normal, 3200), END])
            beside_s = time.perf_counter() - t0
            assert odd.next().HasField("animation_data")  # the odd stream runs too
            odd.cancel()
            gate.set()
        wait_until(lambda: server.service.worker.live_streams == 0, 10.0)
        # alone again, after: the reference spans the same stretch of a busy machine's time
        t0 = time.perf_counter()
        call(server.address, [stream_header(16000), *chunks(normal, 3200), END])
        alone_s = max(alone_s, time.perf_counter() - t0)
        np.testing.assert_allclose(frames_of(beside), frames_of(alone), atol=TOL, rtol=0)
        assert beside_s < 3 * alone_s + 2.0, (beside_s, alone_s)
        wait_until(lambda: server.service.worker.live_streams == 0, 10.0)
    finally:
        server.stop(grace=1)


def test_ten_ms_chunks_keep_up_with_one_second_chunks(animator, speech):
    """The same clip in 10 ms and in 1 s chunks, side by side beside a busy stream: each message
    is read as it arrives, not after an engine step."""
    server = start(animator)
    pcm = pb.float_to_pcm16(np.tile(speech, 2))
    try:
        with ThreadPoolExecutor(3) as pool:
            busy = pool.submit(call, server.address, [stream_header(48000), *chunks(
                pb.float_to_pcm16(resample(np.tile(speech, 3), 16000, 48000)), 96000), END])
            time.sleep(0.2)

            def timed(chunk_bytes):
                t0 = time.perf_counter()
                replies = call(server.address, [stream_header(16000), *chunks(pcm, chunk_bytes), END])
                return replies, time.perf_counter() - t0

            small, large = pool.submit(timed, 320), pool.submit(timed, 32000)
            (small_replies, small_s), (large_replies, large_s) = small.result(), large.result()
            assert busy.result()[-1].status.code == pb.Status.SUCCESS
        assert len(pcm) // 320 > 200  # messages
        assert small_s < 1.5 * large_s + 1.0, (small_s, large_s)
        np.testing.assert_allclose(frames_of(small_replies), reference(animator, pcm, 16000), atol=TOL, rtol=0)
        np.testing.assert_allclose(frames_of(large_replies), reference(animator, pcm, 16000), atol=TOL, rtol=0)
    finally:
        server.stop(grace=1)


def test_the_idle_timer_measures_the_client_not_the_server(animator, speech):
    server = start(animator, idle_timeout_s=1.0, max_buffered_s=0.5)
    try:
        # everything at once: reading pauses while the engine catches up, for longer than the timeout
        pcm = pb.float_to_pcm16(np.tile(speech, 4))
        t0 = time.perf_counter()
        replies = call(server.address, [stream_header(16000), *chunks(pcm, 32000), END])
        assert replies[-1].status.code == pb.Status.SUCCESS, replies[-1]
        assert time.perf_counter() - t0 > 1.5  # the server's backlog outlasted the timeout
        np.testing.assert_allclose(frames_of(replies), reference(animator, pcm, 16000), atol=TOL, rtol=0)
        # empty chunks are no sign of life
        def empty_chunks():
            yield stream_header(16000)
            for _ in range(40):
                time.sleep(0.1)
                yield pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion())

        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as e:
            with grpc.insecure_channel(server.address) as channel:
                list(rpc(channel)(empty_chunks(), timeout=30))
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "--idle-timeout" in e.value.details()
        assert time.perf_counter() - t0 < 3.0
    finally:
        server.stop(grace=1)


def test_bytes_that_are_not_an_audio_stream_get_invalid_argument(animator):
    server = start(animator)
    try:
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as e:
                list(rpc(channel, raw=True)(iter([stream_header(16000).SerializeToString(), b"\xff\xff\xff\xff"]),
                                            timeout=30))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not decode as an AudioStream" in e.value.details()
    finally:
        server.stop(grace=1)


def test_replies_are_split_under_the_size_limit(animator, speech):
    """48 kHz: a 100 ms hop echoes 9.6 kB of audio; with a 6 kB limit every hop is split, and the
    pieces still carry every frame and every sample, in order."""
    server = start(animator, max_reply_bytes=6000)
    pcm = pb.float_to_pcm16(resample(speech, 16000, 48000))
    try:
        replies = call(server.address, [stream_header(48000), *chunks(pcm, 48000), END])
        assert replies[-1].status.code == pb.Status.SUCCESS
        assert max(r.ByteSize() for r in replies) <= 6000
        data = [r.animation_data for r in replies if r.HasField("animation_data")]
        assert len(data) > len(frames_of(replies)) / 3  # split: fewer than a hop's 3 frames a message
        assert b"".join(d.audio.audio_buffer for d in data) == pcm
        codes = [f.time_code for d in data for f in d.skel_animation.blend_shape_weights]
        np.testing.assert_allclose(codes, np.arange(len(codes)) / 30)
        np.testing.assert_allclose(frames_of(replies), reference(animator, pcm, 48000), atol=TOL, rtol=0)
    finally:
        server.stop(grace=1)


def test_a_client_that_never_reads_is_cut_past_the_unread_limit(animator, speech, caplog):
    """gRPC's own buffers take the first ~4 MB; past them the server holds at most the limit."""
    server = start(animator, max_unread_bytes=300_000)
    pcm = pb.float_to_pcm16(resample(np.tile(speech, 12), 16000, 192000))  # ~12 MB of echo
    try:
        with caplog.at_level(logging.WARNING, logger="emotalk_fast.serve"):
            with grpc.insecure_channel(server.address) as channel:
                silent = rpc(channel)(iter([stream_header(192000), *chunks(pcm, 384000), END]), timeout=120)
                wait_until(lambda: any("replies unread" in r.message for r in caplog.records), 60.0)
                wait_until(lambda: server.service.worker.live_streams == 0, 10.0)
                silent.cancel()
        assert send(pcm_int16(pb.float_to_pcm16(speech)), 16000, server=server.address).num_frames > 0
    finally:
        server.stop(grace=1)


def test_a_stream_that_falls_behind_real_time_is_logged_once(animator, speech, caplog):
    """A client speaking at pace: a stream that keeps up logs nothing; on an engine slower than
    real time (each step that makes frames sleeps 0.3 s, for 100 ms hops) one warning line says
    how far behind it runs, and the stream still completes."""
    engine = animator.engine(max_streams=4, **STREAM)
    server = A2FServer(engine, ServeSettings(port=0)).start()
    try:
        with caplog.at_level(logging.WARNING, logger="emotalk_fast.serve"):
            send(speech, 16000, server=server.address, chunk_s=0.1, realtime=True, timeout=60)
            assert not [r for r in caplog.records if "behind real time" in r.message]
            step = engine.step

            def slow_step():
                out = step()
                if out:
                    time.sleep(0.3)
                return out

            engine.step = slow_step
            result = send(speech, 16000, server=server.address, chunk_s=0.1, realtime=True, timeout=120)
        lines = [r.message for r in caplog.records if "behind real time" in r.message]
        assert len(lines) == 1 and "does not keep up" in lines[0], lines
        assert float(lines[0].split(" runs ")[1].split(" s ")[0]) >= 1.1  # past a hop + LAG_WARNING_S (rounded)
        assert result.num_frames == len(result.blendshapes) > 0
    finally:
        server.stop(grace=0)
