"""A client for `emotalk-fast serve` and any Audio2Face-3D 2.x service (needs the [serve] extra).

>>> from emotalk_fast.client import send, health
>>> health("127.0.0.1:52000")                                  # True once the model is loaded
>>> result = send("speech.wav", server="127.0.0.1:52000", person=3)
>>> result.blendshapes.shape, result.names[:2]                 # (T, 52), ('eyeBlinkLeft', ...)
>>> result.save("speech.csv")

Audio goes out as 16-bit mono PCM at its own rate (files are mixed to mono), in `chunk_s`
pieces; `realtime` paces them as a microphone would. Replies are read while audio is sent.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from .io.audio import check_rate, load_mono
from .model.config import BLENDSHAPE_NAMES, FPS
from .errors import InvalidInput, InvalidType
from .files import read_pem
from .serve import protocol as pb

_ARKIT_NAME = dict(zip(pb.A2F_BLENDSHAPE_NAMES, BLENDSHAPE_NAMES))


class ServerError(RuntimeError):
    """The server ended the stream: a Status ERROR (code "ERROR") or a gRPC status code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class ServerAnimation:
    """What the server sent back for one stream."""

    blendshapes: np.ndarray  # float32 [T, channels], after the server's multipliers/offsets/clamping
    names: tuple[str, ...]  # ARKit spelling (jawOpen) where the server's name is one, else as sent
    time_codes: np.ndarray  # float64 [T], seconds from the start of the audio
    audio: bytes  # the audio the server echoed (16-bit PCM)
    sample_rate: int
    emotions: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # a2f_smoothed_output
    input_emotions: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    first_reply_s: float | None = None  # from the first message sent to the first animation data
    messages: int = 0  # animation data messages

    @property
    def num_frames(self) -> int:
        return int(self.blendshapes.shape[0])

    def save(self, path: str | os.PathLike, format: str | None = None) -> Path:
        """.csv, .npy or .json as `Animation.save` writes them (emotion: the last probabilities)."""
        from .io.curves import save_blendshapes

        emotion = self.emotions[-1][1] if self.emotions else None
        return save_blendshapes(path, self.blendshapes, self.names, FPS, emotion, format=format)


def server_address(server: str) -> str:
    """HOST or HOST:PORT -> HOST:PORT: a bare host gets the Audio2Face-3D port (52000), as `--help`
    says (gRPC alone would take 443). A gRPC target with a scheme (dns:, unix:, ...) passes as is."""
    if "://" in server or server.startswith(("unix:", "dns:", "ipv4:", "ipv6:", "vsock:")):
        return server
    if server.startswith("["):  # [IPv6] or [IPv6]:PORT
        return server if "]:" in server else f"{server}:{pb.DEFAULT_PORT}"
    if server.count(":") > 1:  # a bare IPv6 address
        return f"[{server}]:{pb.DEFAULT_PORT}"
    return server if ":" in server else f"{server}:{pb.DEFAULT_PORT}"


def channel(server: str, *, root_cert: str | None = None, client_cert: str | None = None,
            client_key: str | None = None) -> grpc.Channel:
    """An insecure channel, TLS with `root_cert`, or mutual TLS adding `client_cert`/`client_key`."""
    server = server_address(server)
    if root_cert is None:
        if client_cert or client_key:
            raise InvalidInput("a client certificate needs --root-cert (TLS) as well")
        return grpc.insecure_channel(server)
    if (client_cert is None) != (client_key is None):
        raise InvalidInput("client_cert and client_key go together")
    return grpc.secure_channel(server, grpc.ssl_channel_credentials(read_pem(root_cert), read_pem(client_key),
                                                                    read_pem(client_cert)))


def health_status(server: str, timeout: float = 5.0, **tls) -> str | None:
    """A standard gRPC health check: 'SERVING', 'NOT_SERVING' (starting up or draining), another
    status or error code's name, or None when nothing answers at `server`."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with channel(server, **tls) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def health(server: str, timeout: float = 5.0, **tls) -> bool:
    """True when the server answers SERVING to a standard gRPC health check."""
    return health_status(server, timeout, **tls) == "SERVING"


def pcm16_audio(audio, sample_rate: int | None = None) -> tuple[bytes, int]:
    """A path or a mono/[channels, N] array -> (16-bit PCM bytes, rate). Arrays of int16 pass exactly."""
    if not isinstance(audio, (str, os.PathLike)):
        if sample_rate is None:
            raise InvalidInput("give the sample_rate of an array")
        samples = np.asarray(audio)
        if samples.dtype == np.int16 and samples.ndim == 1:
            return samples.astype("<i2").tobytes(), check_rate(sample_rate)
        if samples.dtype.kind != "f":
            raise InvalidType(f"audio arrays must be float in [-1, 1] or int16, got {samples.dtype}")
    samples, rate, _ = load_mono(audio, sample_rate)
    return pb.float_to_pcm16(samples), rate


def stream_header(sample_rate: int, *, level: float | None = None, person: int | None = None,
                  person_weights=None, multipliers: dict | None = None, offsets: dict | None = None,
                  clamp: bool | None = None):
    """The AudioStream message that opens a stream (A2F names for multipliers/offsets)."""
    face = pb.FaceParameters()
    if person is not None:
        face.integer_params["person"] = int(person)
    if person_weights is not None:
        face.float_array_params["person_weights"].values.extend(np.asarray(person_weights, np.float64).tolist())
    post = pb.EmotionPostProcessingParameters()
    if level is not None:
        post.emotion_strength = float(level)
    bs = pb.BlendShapeParameters(bs_weight_multipliers=multipliers or {}, bs_weight_offsets=offsets or {})
    if clamp is not None:
        bs.enable_clamping_bs_weight = bool(clamp)
    return pb.AudioStream(audio_stream_header=pb.AudioStreamHeader(
        audio_header=pb.AudioHeader(audio_format=pb.AudioHeader.AUDIO_FORMAT_PCM, channel_count=1,
                                    samples_per_second=sample_rate, bits_per_sample=pb.PCM_BITS),
        face_params=face, emotion_post_processing_params=post, blendshape_params=bs))


def send(audio, sample_rate: int | None = None, *, server: str = f"127.0.0.1:{pb.DEFAULT_PORT}",
         level: float | None = None, person: int | None = None, person_weights=None,
         multipliers: dict | None = None, offsets: dict | None = None, clamp: bool | None = None,
         emotions: list | None = None, chunk_s: float = 1.0, realtime: bool = False,
         timeout: float | None = None, root_cert: str | None = None, client_cert: str | None = None,
         client_key: str | None = None) -> ServerAnimation:
    """Stream `audio` to the server and collect its animation. Raises ServerError when the
    server ends the stream with an error. `emotions`: [(time_code, {a2f emotion: value})]
    sent with the first chunk (the server echoes them as input_emotions)."""
    pcm, rate = pcm16_audio(audio, sample_rate)
    if not chunk_s > 0:
        raise InvalidInput(f"chunk_s must be > 0, got {chunk_s!r}")
    header = stream_header(rate, level=level, person=person, person_weights=person_weights,
                           multipliers=multipliers, offsets=offsets, clamp=clamp)
    chunk_bytes = 2 * max(1, round(chunk_s * rate))
    sent_at: list[float] = []

    def requests():
        yield header
        start = time.perf_counter()
        sent_at.append(start)
        for i, lo in enumerate(range(0, len(pcm), chunk_bytes)):
            piece = pcm[lo : lo + chunk_bytes]
            if realtime:  # a chunk goes out once its last sample would have been spoken
                time.sleep(max(0.0, start + (lo + len(piece)) / 2 / rate - time.perf_counter()))
            message = pb.AudioWithEmotion(audio_buffer=piece)
            if i == 0 and emotions:
                message.emotions.extend(pb.EmotionWithTimeCode(time_code=t, emotion=e) for t, e in emotions)
            yield pb.AudioStream(audio_with_emotion=message)
        yield pb.AudioStream(end_of_audio=pb.AudioStream.EndOfAudio())

    with channel(server, root_cert=root_cert, client_cert=client_cert, client_key=client_key) as ch:
        call = ch.stream_stream(pb.PROCESS_AUDIO_STREAM, request_serializer=pb.AudioStream.SerializeToString,
                                response_deserializer=pb.AnimationDataStream.FromString)
        try:
            return _collect(call(requests(), timeout=timeout), rate, sent_at)
        except grpc.RpcError as e:
            raise ServerError(e.code().name, e.details() or "") from None


def _collect(replies, rate: int, sent_at: list[float]) -> ServerAnimation:
    names: tuple[str, ...] = ()
    rows, codes, audio, emotions, inputs = [], [], bytearray(), [], []
    first, messages, status = None, 0, None
    for reply in replies:
        part = reply.WhichOneof("stream_part")
        if part == "animation_data_stream_header":
            names = tuple(_ARKIT_NAME.get(n, n) for n in reply.animation_data_stream_header
                          .skel_animation_header.blend_shapes)
        elif part == "animation_data":
            data = reply.animation_data
            if first is None and sent_at:
                first = time.perf_counter() - sent_at[0]
            messages += 1
            for frame in data.skel_animation.blend_shape_weights:
                rows.append(np.asarray(frame.values, np.float32))
                codes.append(frame.time_code)
            audio += data.audio.audio_buffer
            if pb.EMOTION_AGGREGATE_KEY in data.metadata:
                aggregate = pb.unpack_any(data.metadata[pb.EMOTION_AGGREGATE_KEY], pb.EmotionAggregate)
                if aggregate is not None:
                    emotions += [(e.time_code, dict(e.emotion)) for e in aggregate.a2f_smoothed_output]
                    inputs += [(e.time_code, dict(e.emotion)) for e in aggregate.input_emotions]
        elif part == "status":
            status = reply.status
    if status is None:
        raise ServerError("UNKNOWN", "the server closed the stream without a status")
    if status.code == pb.Status.ERROR:
        raise ServerError("ERROR", status.message)
    blendshapes = np.stack(rows) if rows else np.zeros((0, len(names)), np.float32)
    return ServerAnimation(blendshapes, names, np.asarray(codes, np.float64), bytes(audio), rate, emotions,
                           inputs, first, messages)

