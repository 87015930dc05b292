"""`emotalk-fast serve`: EmoTalk behind the Audio2Face-3D gRPC API (ProcessAudioStream + Health).

The servicer and the server's life: TLS, health, metrics, graceful stop. The engine is built
outside (`Animator.engine(...)`) and handed in; one EngineWorker thread owns it, and each call is
a Session (session.py) that talks to that worker only.

Stopping drains: health turns NOT_SERVING and new streams get UNAVAILABLE while the port stays
open, live streams get `shutdown_grace_s` to finish, then the port closes. A second signal
(`stop_now()`) ends the drain at once and cuts the streams still live.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from ..streaming.engine import StreamEngine
from ..files import read_pem
from . import protocol as pb
from .metrics import ServeMetrics
from .session import Session, SessionLimits
from .settings import ServeSettings
from .worker import EngineWorker

log = logging.getLogger("emotalk_fast.serve")


class A2FService:
    """The A2FControllerService on one engine worker."""

    def __init__(self, engine: StreamEngine, settings: ServeSettings, metrics: ServeMetrics):
        self.settings, self.metrics = settings, metrics
        self.worker = EngineWorker(engine, on_step=metrics.observe_step)
        metrics.live_streams.set_function(lambda: self.worker.live_streams)  # slots held, not sessions
        # reading may run ahead of the frames by a few hops at least, or no hop would ever be ready
        ahead = max(settings.max_buffered_s, 2 * engine.settings.latency_ms / 1000)
        self.limits = SessionLimits(settings.max_audio_s, settings.idle_timeout_s, engine.max_streams,
                                    max_buffered_s=ahead, max_reply_bytes=settings.max_reply_bytes,
                                    max_unread_bytes=settings.max_unread_bytes)
        self.sessions = 0  # calls in progress

    async def process_audio_stream(self, requests, context):
        self.sessions += 1
        try:
            async for reply in Session(self.worker, self.limits, self.metrics, context).run(requests):
                yield reply
        finally:
            self.sessions -= 1


class A2FServer:
    """The service, health and metrics on one asyncio event loop in a background thread.

    >>> engine = animator.engine(max_streams=16)
    >>> server = A2FServer(engine, ServeSettings(port=0)).start()
    >>> server.address                           # '127.0.0.1:41234'
    >>> server.stop()                            # live streams get shutdown_grace_s to finish

    Or listen first and load after (a port in use fails at once; health says NOT_SERVING and
    streams get UNAVAILABLE while the model loads):

    >>> server = A2FServer(None, ServeSettings()).start()
    >>> server.attach(animator.engine(max_streams=16))   # now SERVING
    """

    def __init__(self, engine: StreamEngine | None, settings: ServeSettings = ServeSettings()):
        self.settings = settings
        self.metrics = ServeMetrics()
        self.service: A2FService | None = None
        self._engine = engine
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self._metrics_http = None
        self._draining = False  # stopping: new calls get UNAVAILABLE
        self._stopped = threading.Event()
        self._now = threading.Event()  # stop_now(): end the drain at once
        self.streams_cut = 0  # live when the drain was cut short

    def attach(self, engine: StreamEngine) -> None:
        """Serve streams on `engine` from now on (health turns SERVING)."""
        if self.service is not None:
            raise RuntimeError("the server already has an engine")
        self.service = A2FService(engine, self.settings, self.metrics)
        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._set_health(health_pb2.HealthCheckResponse.SERVING),
                                             self._loop).result()

    async def _set_health(self, status) -> None:
        for name in ("", pb.SERVICE_NAME):
            await self._health.set(name, status)

    def _handler(self) -> grpc.GenericRpcHandler:
        async def process_audio_stream(requests, context):
            refusal = ("the server is shutting down; retry elsewhere" if self._draining else
                       "the model is still loading; retry shortly" if self.service is None else None)
            if refusal:
                self.metrics.errors.labels("unavailable").inc()
                await context.abort(grpc.StatusCode.UNAVAILABLE, refusal)
            async for reply in self.service.process_audio_stream(requests, context):
                yield reply

        return grpc.method_handlers_generic_handler(pb.SERVICE_NAME, {
            "ProcessAudioStream": grpc.stream_stream_rpc_method_handler(
                process_audio_stream, request_deserializer=pb.parse_request,
                response_serializer=pb.AnimationDataStream.SerializeToString)})

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
            raise failure[0]
        if self._engine is not None:
            self.attach(self._engine)
            self._engine = None
        return self

    async def _start(self) -> None:
        s = self.settings
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((self._handler(),))
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{s.host}:{s.port}"
        if s.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(read_pem(s.tls_key), read_pem(s.tls_cert))], root_certificates=read_pem(s.client_ca),
                require_client_auth=s.client_ca is not None)
            self.port = server.add_secure_port(address, credentials)
        else:
            try:
                self.port = server.add_insecure_port(address)
            except RuntimeError:  # grpc's way of saying the port is taken
                self.port = 0
        if not self.port:
            raise OSError(f"cannot listen on {address}: the port is in use or not allowed (--port, --host)")
        if s.metrics_port is not None:  # before the gRPC server starts: a busy port stops nothing running
            try:
                self._metrics_http = self.metrics.expose(s.host, s.metrics_port)
            except OSError as e:
                raise OSError(f"cannot serve metrics on {s.host}:{s.metrics_port}: the port is in use or not allowed "
                              f"(--metrics-port, --host): {e.strerror or e}") from None
        await server.start()
        self._server = server
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)  # until attach()

    def stop(self, grace: float | None = None) -> None:
        """Drain (health NOT_SERVING, new streams UNAVAILABLE, the port still open) until the
        live streams finish or `grace` s pass, then close. Blocks until stopped."""
        if self._stopped.is_set() or self._thread is None:
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        if self.service is not None:
            self.service.worker.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()

    def stop_now(self) -> None:
        """End a drain in progress at once: the streams still live are cut (from any thread)."""
        self._now.set()

    async def _stop(self, grace: float) -> None:
        self._draining = True
        await self._health.enter_graceful_shutdown()
        live = (lambda: self.service.sessions) if self.service is not None else (lambda: 0)
        deadline = self._loop.time() + grace
        # health watchers (a load balancer) get NOT_SERVING before the calls close, even with no
        # live stream to wait for: a stop right away could cancel the update on a busy machine
        await asyncio.sleep(min(grace, 0.2))
        while live() and self._loop.time() < deadline and not self._now.is_set():
            await asyncio.sleep(0.05)
        self.streams_cut = live()
        if self.streams_cut:
            log.warning("stopping with %d live stream(s) cut", self.streams_cut)
        await self._server.stop(0)

    def wait_for_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then drain and stop (the CLI's main loop); a second
        signal during the drain stops at once."""
        received = threading.Event()

        def on_signal(*_):
            if received.is_set():
                self.stop_now()
            received.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not received.wait(0.5):
                pass
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
