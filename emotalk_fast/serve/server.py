"""`emotalk-fast serve`: EmoTalk behind the Audio2Face-3D gRPC API (ProcessAudioStream + Health).

A stream's life: the client's AudioStreamHeader opens a stream on the shared engine; each
audio chunk is decoded from 16-bit PCM and pushed; the engine worker batches every ready
stream's hop and hands back frames, which go out as AnimationData (the client's own audio for
the same span echoed beside them); after end_of_audio the last frames, then an
END_OF_A2F_AUDIO_PROCESSING event and a SUCCESS status. Requests are read until end_of_audio
whatever the replies are doing (some clients write everything before they read), so a
stream's pending replies are bounded by --max-audio-s and never by other streams.
"""
from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from ..config import FPS
from ..engine import EngineFull, StreamEngine
from . import protocol as pb
from .metrics import ServeMetrics
from .worker import EngineWorker


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"  # loopback unless asked
    port: int = pb.DEFAULT_PORT  # 0 picks a free port
    max_streams: int = 16
    hop_ms: int = 100  # the stream API's defaults
    lookahead_ms: int = 200
    context_ms: int = 2000
    max_audio_s: float = 600.0  # longer streams end with INVALID_ARGUMENT
    idle_timeout_s: float = 30.0  # a stream silent this long before end_of_audio: DEADLINE_EXCEEDED
    shutdown_grace_s: float = 30.0  # on SIGTERM, live streams get this long to finish
    tls_cert: str | None = None  # PEM files; with client_ca, clients must present a certificate
    tls_key: str | None = None
    client_ca: str | None = None
    metrics_port: int | None = None
    cuda_graphs: bool = False  # the engine's static shapes, each batch bucket's hop a CUDA graph

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
        for name in ("max_audio_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_s', '-s').replace('_', '-')} must be > 0")


class StreamError(Exception):
    """Ends one stream with a Status ERROR message (the protocol's way)."""


class _Abort(Exception):
    """Ends one stream with a gRPC status code (where the protocol has no message)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


_END = object()  # the session's last item


@dataclass
class _Style:
    """What the client's header asks of the animation."""

    sample_rate: int
    level: object
    person: object
    multipliers: np.ndarray  # [52]
    offsets: np.ndarray  # [52]
    clamp: bool


_CHANNEL = {name: i for i, name in enumerate(pb.A2F_BLENDSHAPE_NAMES)}  # A2F name -> output column


def parse_header(header, num_persons: int) -> _Style:
    """The AudioStreamHeader's audio format and parameters -> _Style, or StreamError."""
    audio = header.audio_header
    if audio.audio_format != pb.AudioHeader.AUDIO_FORMAT_PCM:
        raise StreamError(f"audio_format {audio.audio_format} is not supported: only PCM (AUDIO_FORMAT_PCM)")
    if audio.bits_per_sample != pb.PCM_BITS:
        raise StreamError(f"bits_per_sample {audio.bits_per_sample} is not supported: only 16-bit PCM")
    if audio.channel_count != 1:
        raise StreamError(f"channel_count {audio.channel_count} is not supported: only mono (1)")
    post = header.emotion_post_processing_params
    level = 1.0
    if post.HasField("emotion_strength"):
        level = float(post.emotion_strength)
        if not 0.0 <= level <= 1.0:
            raise StreamError(f"emotion_strength must be in [0, 1], got {level}")
    face = header.face_params
    person: object = 0
    if "person" in face.integer_params and "person_weights" in face.float_array_params:
        raise StreamError("give face_params person or person_weights, not both")
    if "person" in face.integer_params:
        person = int(face.integer_params["person"])
        if not 0 <= person < num_persons:
            raise StreamError(f"person must be in 0..{num_persons - 1}, got {person}")
    elif "person_weights" in face.float_array_params:
        weights = np.asarray(face.float_array_params["person_weights"].values, np.float64)
        if weights.shape != (num_persons,):
            raise StreamError(f"person_weights needs {num_persons} values, got {weights.size}")
        person = weights
    bs = header.blendshape_params
    multipliers, offsets = np.ones(len(pb.A2F_BLENDSHAPE_NAMES)), np.zeros(len(pb.A2F_BLENDSHAPE_NAMES))
    for values, target, kind in ((bs.bs_weight_multipliers, multipliers, "bs_weight_multipliers"),
                                 (bs.bs_weight_offsets, offsets, "bs_weight_offsets")):
        for name, value in values.items():
            if not math.isfinite(value):
                raise StreamError(f"{kind}[{name!r}] is {value}")
            if name in _CHANNEL:  # A2F names we do not output (its tongue shapes, say) are ignored
                target[_CHANNEL[name]] = value
    return _Style(audio.samples_per_second, level, person, multipliers, offsets,
                  bool(bs.enable_clamping_bs_weight))



class _Session:
    """One ProcessAudioStream call."""

    def __init__(self, service: A2FService, context):
        self.service, self.context = service, context
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue = asyncio.Queue()  # replies, in order; bounded by the audio's length
        self.sid: int | None = None
        self.style: _Style | None = None
        self.pcm = bytearray()  # the client's audio not yet echoed (whole samples)
        self.pcm_start = 0  # client sample index of pcm[0]
        self.odd_byte = b""  # half a sample carried to the next chunk
        self.received = 0  # client samples received
        self.total: int | None = None  # client samples in all, once end_of_audio came
        self.frames_sent = 0
        self.input_emotions: list = []  # not yet echoed
        self.last_message = time.monotonic()
        self.ended = False  # end_of_audio received (reading has stopped)

    async def run(self, requests):
        reader = asyncio.create_task(self._read(requests))
        watchdog = asyncio.create_task(self._watch_idle())
        try:
            while True:
                item = await self.out.get()
                if item is _END:
                    return
                if isinstance(item, _Abort):
                    self.service.metrics.errors.labels(item.code.name.lower()).inc()
                    await self.context.abort(item.code, item.details)
                self.service.metrics.bytes_out.inc(item.ByteSize())
                yield item
        finally:
            reader.cancel()
            watchdog.cancel()
            if self.sid is not None:
                self.service.worker.close_soon(self.sid)
                self.service.metrics.live_streams.dec()

    # --- requests ---------------------------------------------------------------------------
    async def _read(self, requests) -> None:
        try:
            async for message in requests:
                self.last_message = time.monotonic()
                part = message.WhichOneof("stream_part")
                if part == "audio_stream_header":
                    await self._on_header(message.audio_stream_header)
                elif part == "audio_with_emotion":
                    await self._on_audio(message.audio_with_emotion)
                elif part == "end_of_audio":
                    await self._on_end()
                    return
                else:
                    raise StreamError("an AudioStream message with no part set")
            # the client half-closed without end_of_audio: its audio has ended all the same
            if self.sid is None:
                raise StreamError("the stream closed before an audio_stream_header")
            await self._on_end()
        except StreamError as e:
            self._fail(str(e))
        except _Abort as e:
            self.out.put_nowait(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a fault ends this stream, never the server
            self._fail(f"internal error: {type(e).__name__}: {e}")

    async def _on_header(self, header) -> None:
        if self.style is not None:
            raise StreamError("a second audio_stream_header: send it once, first")
        service = self.service
        style = parse_header(header, service.num_persons)
        try:
            self.sid = await service.worker.open(self._sink, style.level, style.person, style.sample_rate)
        except EngineFull:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"all {service.settings.max_streams} streams are busy; retry later") from None
        except (ValueError, TypeError) as e:
            raise StreamError(str(e)) from None
        self.style = style
        service.metrics.live_streams.inc()
        service.metrics.streams.inc()
        self.out.put_nowait(pb.AnimationDataStream(animation_data_stream_header=pb.AnimationDataStreamHeader(
            audio_header=header.audio_header,
            skel_animation_header=pb.SkelAnimationHeader(blend_shapes=pb.A2F_BLENDSHAPE_NAMES),
            start_time_code_since_epoch=time.time())))

    async def _on_audio(self, chunk) -> None:
        if self.style is None:
            raise StreamError("audio_with_emotion before the audio_stream_header: send the header first")
        data = self.odd_byte + chunk.audio_buffer
        whole = len(data) - len(data) % 2
        self.odd_byte = data[whole:]
        self.received += whole // 2
        limit = self.service.settings.max_audio_s
        if self.received > limit * self.style.sample_rate:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"the stream is longer than the server's limit of "
                                                           f"{limit:g} s of audio (--max-audio-s)")
        self.pcm += data[:whole]
        self.input_emotions.extend(chunk.emotions)
        if whole:
            await self.service.worker.call(self.service.engine.push, self.sid, pb.pcm16_to_float(data[:whole]))

    async def _on_end(self) -> None:
        if self.style is None:
            raise StreamError("end_of_audio before the audio_stream_header")
        if self.odd_byte:
            raise StreamError("the audio ends in half a 16-bit sample (an odd number of bytes)")
        self.ended, self.total = True, self.received
        engine = self.service.engine

        def flush(sid):
            engine.flush(sid)
            return engine.finished(sid)

        try:
            nothing_left = await self.service.worker.call(flush, self.sid)
        except ValueError as e:
            raise StreamError(str(e)) from None
        if nothing_left:  # no audio at all: no frames
            self._finish()

    async def _watch_idle(self) -> None:
        timeout = self.service.settings.idle_timeout_s
        while not self.ended:
            await asyncio.sleep(min(1.0, timeout / 4))
            if not self.ended and time.monotonic() - self.last_message > timeout:
                self.out.put_nowait(_Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                           f"no audio for {timeout:g} s (--idle-timeout) before end_of_audio"))
                return

    # --- replies ----------------------------------------------------------------------------
    def _sink(self, frames, logits, finished) -> None:  # on the engine thread
        self.loop.call_soon_threadsafe(self._on_frames, frames, logits, finished)

    def _on_frames(self, frames, logits, finished) -> None:
        if frames is None:  # the engine failed on this stream's batch
            self._fail(f"internal error: {type(logits).__name__}: {logits}")
            return
        style, rate = self.style, self.style.sample_rate
        f0, f1 = self.frames_sent, self.frames_sent + len(frames)
        values = frames * style.multipliers + style.offsets
        if style.clamp:
            values = np.clip(values, 0.0, 1.0)
        # the client's samples for frames [f0, f1); the last message takes the rest
        end = self.total if finished else min(f1 * rate // FPS, self.received)
        echo_end = max(end, self.pcm_start)
        audio = bytes(self.pcm[: 2 * (echo_end - self.pcm_start)])
        del self.pcm[: len(audio)]
        audio_start, self.pcm_start = self.pcm_start, echo_end
        data = pb.AnimationData(
            skel_animation=pb.SkelAnimation(blend_shape_weights=[
                pb.FloatArrayWithTimeCode(time_code=f / FPS, values=row) for f, row in zip(range(f0, f1), values)]),
            audio=pb.AudioWithTimeCode(time_code=audio_start / rate, audio_buffer=audio))
        aggregate = pb.EmotionAggregate(
            input_emotions=self.input_emotions,
            a2f_smoothed_output=[pb.EmotionWithTimeCode(
                time_code=f0 / FPS, emotion=pb.emotion_probabilities(self.service.labels, logits))])
        self.input_emotions = []
        pb.pack_any(data.metadata[pb.EMOTION_AGGREGATE_KEY], aggregate)
        self.out.put_nowait(pb.AnimationDataStream(animation_data=data))
        self.frames_sent = f1
        self.service.metrics.frames_out.inc(len(frames))
        if finished:
            self._finish()

    def _finish(self) -> None:
        self.out.put_nowait(pb.AnimationDataStream(event=pb.Event(event_type=pb.END_OF_A2F_AUDIO_PROCESSING)))
        self.out.put_nowait(pb.AnimationDataStream(status=pb.Status(code=pb.Status.SUCCESS, message="done")))
        self.out.put_nowait(_END)

    def _fail(self, message: str) -> None:
        self.service.metrics.errors.labels("stream_error").inc()
        self.out.put_nowait(pb.AnimationDataStream(status=pb.Status(code=pb.Status.ERROR, message=message)))
        self.out.put_nowait(_END)


class A2FService:
    """The A2FControllerService on one engine worker."""

    def __init__(self, engine: StreamEngine, settings: ServeSettings, metrics: ServeMetrics):
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.worker = EngineWorker(engine, on_step=metrics.observe_step)
        self.labels = engine.model.cfg.emotion_labels
        self.num_persons = engine.model.cfg.decoder.num_persons

    def handler(self) -> grpc.GenericRpcHandler:
        async def process_audio_stream(requests, context):
            async for reply in _Session(self, context).run(requests):
                yield reply

        return grpc.method_handlers_generic_handler(pb.SERVICE_NAME, {
            "ProcessAudioStream": grpc.stream_stream_rpc_method_handler(
                process_audio_stream, request_deserializer=pb.AudioStream.FromString,
                response_serializer=pb.AnimationDataStream.SerializeToString)})


class A2FServer:
    """The service, health and metrics on one asyncio event loop in a background thread.

    >>> server = A2FServer(animator, ServeSettings(port=0)).start()
    >>> server.address                           # '127.0.0.1:41234'
    >>> server.stop()                            # live streams get shutdown_grace_s to finish
    """

    def __init__(self, animator, settings: ServeSettings = ServeSettings()):
        self.settings = settings
        self.metrics = ServeMetrics()
        engine = StreamEngine(animator.model, animator.device, animator.dtype, max_streams=settings.max_streams,
                              hop_ms=settings.hop_ms, lookahead_ms=settings.lookahead_ms,
                              context_ms=settings.context_ms, max_cache_s=settings.max_audio_s,
                              cuda_graphs=settings.cuda_graphs)
        if settings.cuda_graphs:
            engine.prepare_static_hops()  # every bucket's graph before the first client, not during its stream
        self.service = A2FService(engine, settings, self.metrics)
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self._metrics_http = None
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def start(self) -> A2FServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run():
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as e:  # noqa: BLE001 - re-raised in start()
                failure.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="emotalk-serve", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self.service.worker.stop()
            raise failure[0]
        return self

    async def _start(self) -> None:
        s = self.settings
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((self.service.handler(),))
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{s.host}:{s.port}"
        if s.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(pb.read_pem(s.tls_key), pb.read_pem(s.tls_cert))], root_certificates=pb.read_pem(s.client_ca),
                require_client_auth=s.client_ca is not None)
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        if s.metrics_port is not None:
            self._metrics_http = self.metrics.expose(s.host, s.metrics_port)
        for name in ("", pb.SERVICE_NAME):  # the model is loaded: serving
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting streams, let live ones finish for up to `grace` s, then shut down."""
        if self._stopped.is_set() or self._thread is None:
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self.service.worker.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()

    async def _stop(self, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)

    def wait_for_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then stop gracefully (the CLI's main loop)."""
        received = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: received.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not received.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stop()
