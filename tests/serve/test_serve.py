"""`emotalk-fast serve` over loopback: the Audio2Face-3D protocol sequence, frames equal to
`animator.stream()` at 16/44.1/48 kHz, the blendshape and style parameters, every error, many
concurrent clients, disconnects, a client that never reads, TLS and mutual TLS, health and
metrics. Real speech from espeak-ng; the mini model with random weights."""
import math
import shutil
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import torch

from emotalk_fast import Animator
from emotalk_fast.io.audio import resample
from emotalk_fast.streaming.engine import StreamEngine
from emotalk_fast.streaming.settings import StreamSettings
from emotalk_fast.client import ServerError, send, stream_header
from emotalk_fast.serve import protocol as pb
from emotalk_fast.serve.server import A2FServer, ServeSettings
from helpers import espeak_speech, free_port, wait_until

TOL = 1e-5
STREAM = dict(hop_ms=100, lookahead_ms=200, context_ms=1000)  # the server's and the reference's


@pytest.fixture(scope="module")
def animator():
    return Animator.from_config("mini", seed=5, device="cpu")


@pytest.fixture(scope="module")
def server(animator):
    s = A2FServer(animator.engine(max_streams=12, **STREAM), ServeSettings(port=0)).start()
    yield s
    s.stop(grace=1)


@pytest.fixture(scope="module")
def speech():
    return espeak_speech("Faces move with the voice, frame by frame.", speed=200)


def pcm_at(speech16k, rate) -> bytes:
    audio = speech16k if rate == 16000 else resample(speech16k, 16000, rate)
    return pb.float_to_pcm16(audio)


def reference(animator, pcm: bytes, rate: int, level=1, person=0) -> np.ndarray:
    """What `animator.stream()` gives for the same 16-bit audio and style."""
    stream = animator.stream(level=level, person=person, sample_rate=rate, **STREAM)
    return np.concatenate([stream.push(pb.pcm16_to_float(pcm)), stream.flush()])


def call(address: str, messages, timeout: float = 120, credentials=None):
    """The raw RPC: every reply, in order (raises grpc.RpcError on a gRPC status)."""
    channel = (grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address))
    with channel:
        rpc = channel.stream_stream(pb.PROCESS_AUDIO_STREAM, request_serializer=pb.AudioStream.SerializeToString,
                                    response_deserializer=pb.AnimationDataStream.FromString)
        return list(rpc(iter(messages), timeout=timeout))


def audio_messages(pcm: bytes, chunk_bytes: int, emotions=()):
    out = []
    for i, lo in enumerate(range(0, len(pcm), chunk_bytes)):
        m = pb.AudioWithEmotion(audio_buffer=pcm[lo : lo + chunk_bytes])
        if i == 0:
            m.emotions.extend(emotions)
        out.append(pb.AudioStream(audio_with_emotion=m))
    return out


END = pb.AudioStream(end_of_audio=pb.AudioStream.EndOfAudio())


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_protocol_sequence_frames_and_echo(server, animator, speech, rate):
    pcm = pcm_at(speech, rate)
    n = len(pcm) // 2
    emotions = [pb.EmotionWithTimeCode(time_code=0.0, emotion={"joy": 1.0}),
                pb.EmotionWithTimeCode(time_code=1.0, emotion={"fear": 0.5})]
    # odd chunk sizes: samples split across messages must be joined
    replies = call(server.address, [stream_header(rate), *audio_messages(pcm, 2 * rate // 3 + 1, emotions), END])
    parts = [r.WhichOneof("stream_part") for r in replies]
    assert parts[0] == "animation_data_stream_header"
    assert parts[-2:] == ["event", "status"] and set(parts[1:-2]) == {"animation_data"}
    header = replies[0].animation_data_stream_header
    assert (header.audio_header.samples_per_second, header.audio_header.bits_per_sample,
            header.audio_header.channel_count) == (rate, 16, 1)
    assert tuple(header.skel_animation_header.blend_shapes) == pb.A2F_BLENDSHAPE_NAMES
    assert header.skel_animation_header.blend_shapes[8] == "EyeBlinkLeft"
    assert abs(header.start_time_code_since_epoch - time.time()) < 120
    assert replies[-2].event.event_type == pb.END_OF_A2F_AUDIO_PROCESSING
    assert replies[-1].status.code == pb.Status.SUCCESS

    data = [r.animation_data for r in replies[1:-2]]
    frames = np.array([f.values for d in data for f in d.skel_animation.blend_shape_weights], np.float32)
    codes = np.array([f.time_code for d in data for f in d.skel_animation.blend_shape_weights])
    assert len(frames) == math.ceil(n / rate * 30)
    np.testing.assert_allclose(codes, np.arange(len(frames)) / 30)
    ref = reference(animator, pcm, rate)
    assert frames.shape == ref.shape
    np.testing.assert_allclose(frames, ref, atol=TOL, rtol=0)
    # the client's own audio, echoed exactly, each piece at its time code
    assert b"".join(d.audio.audio_buffer for d in data) == pcm
    starts = np.cumsum([0] + [len(d.audio.audio_buffer) // 2 for d in data[:-1]])
    np.testing.assert_allclose([d.audio.time_code for d in data], starts / rate)
    # emotions: EmoTalk's probabilities under A2F's names; the client's input echoed once
    aggregates = [pb.unpack_any(d.metadata[pb.EMOTION_AGGREGATE_KEY], pb.EmotionAggregate) for d in data]
    assert all(a is not None and not a.a2e_output for a in aggregates)
    smoothed = [dict(a.a2f_smoothed_output[0].emotion) for a in aggregates]
    assert set(smoothed[0]) == {"anger", "disgust", "fear", "joy", "sadness", "amazement"}
    assert all(0 < sum(s.values()) < 1 for s in smoothed)  # neutral's share is not sent
    inputs = [dict(e.emotion) for a in aggregates for e in a.input_emotions]
    assert inputs == [{"joy": 1.0}, {"fear": 0.5}]


def test_blendshape_parameters_and_style(server, animator, speech):
    pcm = pcm_at(speech, 16000)
    weights = np.zeros(24)
    weights[[4, 17]] = [0.25, 0.75]
    ref = reference(animator, pcm, 16000, level=0.3, person=weights)
    multipliers = {"JawOpen": 2.5, "EyeBlinkLeft": 0.0, "TongueTipUp": 7.0}  # A2F's tongue: ignored
    offsets = {"JawOpen": 0.1, "MouthClose": -0.2, "TongueRollUp": 1.0}
    got = send(pcm_to_int16(pcm), 16000, server=server.address, level=0.3, person_weights=weights,
               multipliers=multipliers, offsets=offsets)
    expect = ref.copy()
    jaw, blink, close = (pb.A2F_BLENDSHAPE_NAMES.index(n) for n in ("JawOpen", "EyeBlinkLeft", "MouthClose"))
    expect[:, jaw] = expect[:, jaw] * 2.5 + 0.1
    expect[:, blink] = 0.0
    expect[:, close] -= 0.2
    np.testing.assert_allclose(got.blendshapes, expect, atol=TOL, rtol=0)
    assert got.names[jaw] == "jawOpen"  # the library client gives ARKit spelling back
    clamped = send(pcm_to_int16(pcm), 16000, server=server.address, level=0.3, person_weights=weights,
                   multipliers=multipliers, offsets=offsets, clamp=True)
    np.testing.assert_allclose(clamped.blendshapes, np.clip(expect, 0, 1), atol=TOL, rtol=0)
    assert np.any(expect < 0) or np.any(expect > 1)  # clamping did something
    # person by index
    by_index = send(pcm_to_int16(pcm), 16000, server=server.address, person=9, level=0)
    np.testing.assert_allclose(by_index.blendshapes, reference(animator, pcm, 16000, level=0, person=9),
                               atol=TOL, rtol=0)


def pcm_to_int16(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2")


def header_with(**audio):
    h = stream_header(16000)
    for k, v in audio.items():
        setattr(h.audio_stream_header.audio_header, k, v)
    return h


def _face(**kw):
    h = stream_header(16000)
    for k, v in kw.items():
        if k == "person_weights":
            h.audio_stream_header.face_params.float_array_params["person_weights"].values.extend(v)
        else:
            h.audio_stream_header.face_params.integer_params[k] = v
    return h


def _strength(v):
    h = stream_header(16000)
    h.audio_stream_header.emotion_post_processing_params.emotion_strength = v
    return h


def _multiplier(v):
    h = stream_header(16000)
    h.audio_stream_header.blendshape_params.bs_weight_multipliers["JawOpen"] = v
    return h


AUDIO = pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(audio_buffer=b"\x00\x01" * 8000))
ERRORS = {
    "audio before header": ([AUDIO, END], "before the audio_stream_header"),
    "second header": ([stream_header(16000), AUDIO, stream_header(16000), END], "second audio_stream_header"),
    "24-bit": ([header_with(bits_per_sample=24), AUDIO, END], "only 16-bit PCM"),
    "stereo": ([header_with(channel_count=2), AUDIO, END], "only mono"),
    "not PCM": ([header_with(audio_format=3), AUDIO, END], "only PCM"),
    "rate": ([header_with(samples_per_second=1000), AUDIO, END], "unsupported sample rate"),
    "person": ([_face(person=30), AUDIO, END], "person must be in 0..23"),
    "person weights": ([_face(person_weights=[1.0, 0.0]), AUDIO, END], "person_weights needs 24"),
    "both persons": ([_face(person=1, person_weights=[1.0] + [0.0] * 23), AUDIO, END], "not both"),
    "strength": ([_strength(2.0), AUDIO, END], "emotion_strength must be in [0, 1]"),
    "multiplier": ([_multiplier(float("nan")), AUDIO, END], "bs_weight_multipliers['JawOpen']"),
    "odd bytes": ([stream_header(16000), pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(
        audio_buffer=b"\x00" * 16001)), END], "half a 16-bit sample"),
    "too short": ([stream_header(16000), pb.AudioStream(audio_with_emotion=pb.AudioWithEmotion(
        audio_buffer=b"\x00\x01" * 100)), END], "too short"),
    "empty message": ([stream_header(16000), pb.AudioStream(), END], "no part set"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_end_the_stream_with_a_status(server, case):
    messages, words = ERRORS[case]
    replies = call(server.address, messages)
    assert replies[-1].WhichOneof("stream_part") == "status"
    assert replies[-1].status.code == pb.Status.ERROR
    assert words in replies[-1].status.message
    assert not any(r.WhichOneof("stream_part") in ("animation_data", "event") for r in replies)


def test_no_audio_at_all_gives_no_frames(server):
    replies = call(server.address, [stream_header(16000), END])
    assert [r.WhichOneof("stream_part") for r in replies] == ["animation_data_stream_header", "event", "status"]
    assert replies[-1].status.code == pb.Status.SUCCESS


@pytest.fixture()
def strict(animator):
    s = A2FServer(animator.engine(max_streams=1, max_cache_s=4.0, **STREAM),
                  ServeSettings(port=0, max_audio_s=4.0, idle_timeout_s=1.0)).start()
    yield s
    s.stop(grace=1)


def _open_stream(address):
    """A stream that sent its header and waits (the caller cancels it)."""
    feed, gate = [stream_header(16000)], threading.Event()

    def requests():
        yield from feed
        gate.wait(30)

    channel = grpc.insecure_channel(address)
    rpc = channel.stream_stream(pb.PROCESS_AUDIO_STREAM, request_serializer=pb.AudioStream.SerializeToString,
                                response_deserializer=pb.AnimationDataStream.FromString)
    responses = rpc(requests(), timeout=60)
    first = next(responses)  # the header reply: the stream holds its slot
    assert first.WhichOneof("stream_part") == "animation_data_stream_header"
    return channel, responses, gate


def test_limits_give_grpc_status_codes_and_disconnects_free_slots(strict, speech):
    channel, responses, gate = _open_stream(strict.address)
    with pytest.raises(grpc.RpcError) as e:  # max_streams=1 is taken
        call(strict.address, [stream_header(16000), *audio_messages(pcm_at(speech, 16000), 16000), END])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    responses.cancel()  # the client goes away: its slot is free at once
    gate.set()
    channel.close()
    wait_until(lambda: strict.service.worker.live_streams == 0, 10.0)
    assert len(send(pcm_to_int16(pcm_at(speech, 16000)), 16000, server=strict.address).blendshapes) > 0

    long_pcm = pcm_at(np.tile(speech, 3), 16000)  # > max_audio_s
    with pytest.raises(grpc.RpcError) as e:
        call(strict.address, [stream_header(16000), *audio_messages(long_pcm, 16000), END])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-audio-s" in e.value.details()

    t0 = time.monotonic()
    channel, responses, gate = _open_stream(strict.address)  # then silence
    with pytest.raises(grpc.RpcError) as e:
        list(responses)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "--idle-timeout" in e.value.details()
    assert 0.9 < time.monotonic() - t0 < 10
    gate.set()
    channel.close()
    wait_until(lambda: strict.service.worker.live_streams == 0, 10.0)


def test_concurrent_clients_each_equal_their_solo_run(server, animator):
    lines = ["One face smiles.", "Another frowns a little.", "A third one speaks slowly and calmly.",
             "Four voices at once.", "Five is a crowd.", "Six keeps going on and on.", "Seven.",
             "Eight streams share the engine."]
    rates = [16000, 44100, 48000, 22050, 16000, 32000, 44100, 8000]
    clips = [pcm_at(espeak_speech(t, speed=180 + 5 * i), r) for i, (t, r) in enumerate(zip(lines, rates))]
    results, errors = [None] * 8, []

    def run(i):
        try:
            results[i] = send(pcm_to_int16(clips[i]), rates[i], server=server.address, person=i, level=i % 2,
                              chunk_s=0.05 + 0.1 * i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    registry = server.metrics.registry
    before = [registry.get_sample_value(f"emotalk_hop_batch_streams_{k}") for k in ("sum", "count")]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    streams, steps = (registry.get_sample_value(f"emotalk_hop_batch_streams_{k}") - b for k, b in zip(("sum", "count"), before))
    assert streams / steps > 2  # the clients shared batched hops
    for i in range(8):
        ref = reference(animator, clips[i], rates[i], level=i % 2, person=i)
        np.testing.assert_allclose(results[i].blendshapes, ref, atol=TOL, rtol=0, err_msg=f"client {i}")
        assert results[i].audio == clips[i]


def test_static_shapes_server_equals_solo_runs(animator):
    """serve --cuda-graphs on the CPU: the engine's static-shape path (eager here) behind the
    service; concurrent clients still get exactly their solo frames."""
    s = A2FServer(animator.engine(max_streams=4, max_cache_s=5.0, cuda_graphs=True, **STREAM),
                  ServeSettings(port=0, max_audio_s=5.0)).start()
    try:
        clips = [pcm_at(espeak_speech(t, speed=200), r) for t, r in (("Static shapes.", 16000),
                                                                      ("Padded to a bucket.", 48000),
                                                                      ("Three at once.", 22050))]
        rates = [16000, 48000, 22050]
        results = [None] * 3
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, send(pcm_to_int16(clips[i]), rates[i], server=s.address, person=i, chunk_s=0.1))) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert s.service.worker.engine.executor.static_hops  # the static path ran
        for i in range(3):
            ref = reference(animator, clips[i], rates[i], level=1, person=i)
            np.testing.assert_allclose(results[i].blendshapes, ref, atol=TOL, rtol=0, err_msg=f"client {i}")
    finally:
        s.stop(grace=1)


def test_a_client_that_never_reads_stalls_no_one(server, animator, speech):
    pcm = pcm_at(np.tile(speech, 4), 16000)
    channel = grpc.insecure_channel(server.address)
    rpc = channel.stream_stream(pb.PROCESS_AUDIO_STREAM, request_serializer=pb.AudioStream.SerializeToString,
                                response_deserializer=pb.AnimationDataStream.FromString)
    silent = rpc(iter([stream_header(16000), *audio_messages(pcm, 3200), END]), timeout=120)  # never read
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        other = send(pcm_to_int16(pcm_at(speech, 16000)), 16000, server=server.address, person=2)
        assert time.monotonic() - t0 < 60
        np.testing.assert_allclose(other.blendshapes, reference(animator, pcm_at(speech, 16000), 16000, person=2),
                                   atol=TOL, rtol=0)
    finally:
        silent.cancel()
        channel.close()
    wait_until(lambda: server.service.worker.live_streams == 0, 10.0)


def test_health_check_watch_and_metrics(animator, speech):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from emotalk_fast.client import health

    s = A2FServer(animator.engine(**STREAM), ServeSettings(port=0, metrics_port=free_port())).start()
    try:
        assert health(s.address)
        with grpc.insecure_channel(s.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert stub.Check(health_pb2.HealthCheckRequest(service=pb.SERVICE_NAME)).status == \
                health_pb2.HealthCheckResponse.SERVING
            watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            result = send(pcm_to_int16(pcm_at(speech, 16000)), 16000, server=s.address)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{s.settings.metrics_port}/metrics").read().decode()
            assert f"emotalk_frames_out_total {float(result.num_frames)}" in metrics
            assert "emotalk_live_streams 0.0" in metrics and "emotalk_streams_total 1.0" in metrics
            assert "emotalk_hop_seconds_count" in metrics
            backlog = float(next(line.split()[1] for line in metrics.splitlines()
                                 if line.startswith("emotalk_stream_backlog_seconds_count")))
            assert backlog > 0  # one observation per reply
            threading.Timer(0.5, s.stop, kwargs={"grace": 1}).start()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        s.stop(grace=1)
    assert not health(s.address, timeout=2)


# --- TLS ---------------------------------------------------------------------------------------
def _certificates(tmp_path):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=emotalk test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (tmp_path / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {k: str(tmp_path / f) for k, f in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"),
                                                ("client_cert", "client.pem"), ("client_key", "client.key"))}


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_and_mutual_tls(animator, speech, tmp_path, mutual):
    c = _certificates(tmp_path)
    s = A2FServer(animator.engine(**STREAM), ServeSettings(port=0, tls_cert=c["cert"], tls_key=c["key"],
                                                         client_ca=c["ca"] if mutual else None)).start()
    audio = pcm_to_int16(pcm_at(speech, 16000))
    try:
        client_tls = dict(client_cert=c["client_cert"], client_key=c["client_key"]) if mutual else {}
        got = send(audio, 16000, server=s.address, root_cert=c["ca"], **client_tls)
        assert got.num_frames > 0
        with pytest.raises(ServerError) as e:  # plaintext to a TLS port
            send(audio, 16000, server=s.address, timeout=10)
        assert e.value.code == "UNAVAILABLE"
        if mutual:  # TLS without a client certificate is refused
            with pytest.raises(ServerError) as e:
                send(audio, 16000, server=s.address, root_cert=c["ca"], timeout=10)
            assert e.value.code == "UNAVAILABLE"
    finally:
        s.stop(grace=1)


class _FaultyEngine(StreamEngine):
    """Fails the group of any stream of `faulty_person` on its last, shorter hop (its own group)."""

    faulty_person = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        run = self.executor.run

        def faulty_run(plan, streams):
            if plan.hop < self.grid.hop and any(s.person == self.faulty_person for s in streams):
                raise RuntimeError("simulated device fault")
            return run(plan, streams)

        self.executor.run = faulty_run


def test_an_engine_fault_ends_its_streams_not_the_server(animator, speech):
    """Three live streams; one batch (the 22.05 kHz, person 1 stream's last hop) fails: that stream ends
    with ERROR, the other two get exactly their solo frames, and the next stream is served."""
    engine = _FaultyEngine(animator.model, "cpu", torch.float32, StreamSettings(**STREAM), max_streams=4)
    s = A2FServer(engine, ServeSettings(port=0)).start()
    long = np.tile(speech, 2)
    clips = {16000: pcm_at(long, 16000), 22050: pcm_at(speech[: 16000 + 533], 22050), 48000: pcm_at(long, 48000)}
    results = {}

    def run(rate):
        try:
            results[rate] = send(pcm_to_int16(clips[rate]), rate, server=s.address, chunk_s=0.2,
                                 person=int(rate == 22050))
        except ServerError as e:
            results[rate] = e

    threads = [threading.Thread(target=run, args=(rate,)) for rate in clips]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        failed = results[22050]
        assert isinstance(failed, ServerError) and failed.code == "ERROR"
        assert "RuntimeError: simulated device fault" in failed.message
        for rate in (16000, 48000):
            np.testing.assert_allclose(results[rate].blendshapes, reference(animator, clips[rate], rate),
                                       atol=TOL, rtol=0, err_msg=f"{rate} Hz")
        wait_until(lambda: s.service.worker.live_streams == 0, 10.0)
        assert send(pcm_to_int16(clips[16000]), 16000, server=s.address).num_frames > 0  # the next is served
    finally:
        s.stop(grace=1)