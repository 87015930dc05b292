"""One ProcessAudioStream call's state machine: header, audio, end, errors, replies.

The client's AudioStreamHeader opens a stream on the engine worker; each audio chunk is
decoded from 16-bit PCM and pushed; the worker hands back frames, which go out as
AnimationData (the client's own audio for the same span echoed beside them); after
end_of_audio the last frames, then an END_OF_A2F_AUDIO_PROCESSING event and a SUCCESS status.
Requests are read until end_of_audio whatever the replies are doing (some clients write
everything before they read), so a stream's pending replies are bounded by the server's audio
limit and never by other streams. The session touches no tensor and no engine: only the worker.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from ..config import FPS
from ..engine import EngineFull
from . import protocol as pb
from .metrics import ServeMetrics
from .worker import EngineWorker, StreamHandle


@dataclass(frozen=True)
class SessionLimits:
    """What the server allows one stream."""

    max_audio_s: float  # longer streams end with INVALID_ARGUMENT
    idle_timeout_s: float  # silent this long before end_of_audio: DEADLINE_EXCEEDED
    max_streams: int  # for the RESOURCE_EXHAUSTED message


class Abort(Exception):
    """Ends one stream with a gRPC status code (where the protocol has no message)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


_END = object()  # the session's last item


class Session:
    """One ProcessAudioStream call: `run(requests)` yields its replies."""

    def __init__(self, worker: EngineWorker, limits: SessionLimits, metrics: ServeMetrics, context):
        self.worker, self.limits, self.metrics, self.context = worker, limits, metrics, context
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue = asyncio.Queue()  # replies, in order; bounded by the audio's length
        self.handle = StreamHandle(self._sink)
        self.style: pb.StreamStyle | None = None
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
                if isinstance(item, Abort):
                    self.metrics.errors.labels(item.code.name.lower()).inc()
                    await self.context.abort(item.code, item.details)
                self.metrics.bytes_out.inc(item.ByteSize())
                yield item
        finally:
            reader.cancel()
            watchdog.cancel()
            self.worker.close(self.handle)  # runs after its open, whenever this ends

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
                    raise pb.StreamError("an AudioStream message with no part set")
            # the client half-closed without end_of_audio: its audio has ended all the same
            if self.style is None:
                raise pb.StreamError("the stream closed before an audio_stream_header")
            await self._on_end()
        except pb.StreamError as e:
            self._fail(str(e))
        except Abort as e:
            self.out.put_nowait(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a fault ends this stream, never the server
            self._fail(f"internal error: {type(e).__name__}: {e}")

    async def _on_header(self, header) -> None:
        if self.style is not None:
            raise pb.StreamError("a second audio_stream_header: send it once, first")
        style = pb.parse_header(header, self.worker.num_persons)
        try:
            await self.worker.open(self.handle, style.level, style.person, style.sample_rate)
        except EngineFull:
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"all {self.limits.max_streams} streams are busy; retry later") from None
        except (ValueError, TypeError) as e:
            raise pb.StreamError(str(e)) from None
        self.style = style
        self.metrics.streams.inc()
        self.out.put_nowait(pb.header_reply(header.audio_header, time.time()))

    async def _on_audio(self, chunk) -> None:
        if self.style is None:
            raise pb.StreamError("audio_with_emotion before the audio_stream_header: send the header first")
        data = self.odd_byte + chunk.audio_buffer
        whole = len(data) - len(data) % 2
        self.odd_byte = data[whole:]
        self.received += whole // 2
        limit = self.limits.max_audio_s
        if self.received > limit * self.style.sample_rate:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"the stream is longer than the server's limit of "
                                                          f"{limit:g} s of audio (--max-audio-s)")
        self.pcm += data[:whole]
        self.input_emotions.extend(chunk.emotions)
        if whole:
            await self.worker.push(self.handle, pb.pcm16_to_float(data[:whole]))

    async def _on_end(self) -> None:
        if self.style is None:
            raise pb.StreamError("end_of_audio before the audio_stream_header")
        if self.odd_byte:
            raise pb.StreamError("the audio ends in half a 16-bit sample (an odd number of bytes)")
        self.ended, self.total = True, self.received
        try:
            nothing_left = await self.worker.flush(self.handle)
        except ValueError as e:
            raise pb.StreamError(str(e)) from None
        if nothing_left:  # no audio at all: no frames
            self._finish()

    async def _watch_idle(self) -> None:
        timeout = self.limits.idle_timeout_s
        while not self.ended:
            await asyncio.sleep(min(1.0, timeout / 4))
            if not self.ended and time.monotonic() - self.last_message > timeout:
                self.out.put_nowait(Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                          f"no audio for {timeout:g} s (--idle-timeout) before end_of_audio"))
                return

    # --- replies ----------------------------------------------------------------------------
    def _sink(self, frames, logits, finished) -> None:  # on the engine thread
        self.loop.call_soon_threadsafe(self._on_frames, frames, logits, finished)

    def _on_frames(self, frames, logits, finished) -> None:
        if frames is None:  # the engine failed on this stream's batch
            self._fail(f"internal error: {type(logits).__name__}: {logits}")
            return
        rate = self.style.sample_rate
        f0, f1 = self.frames_sent, self.frames_sent + len(frames)
        # the client's samples for frames [f0, f1); the last message takes the rest
        end = self.total if finished else min(f1 * rate // FPS, self.received)
        echo_end = max(end, self.pcm_start)
        audio = bytes(self.pcm[: 2 * (echo_end - self.pcm_start)])
        del self.pcm[: len(audio)]
        audio_start, self.pcm_start = self.pcm_start, echo_end
        emotion = pb.emotion_probabilities(self.worker.emotion_labels, logits)
        self.out.put_nowait(pb.animation_reply(f0, self.style.apply(frames), audio, audio_start / rate,
                                               self.input_emotions, emotion))
        self.input_emotions = []
        self.frames_sent = f1
        self.metrics.frames_out.inc(len(frames))
        if finished:
            self._finish()

    def _finish(self) -> None:
        for reply in pb.end_replies():
            self.out.put_nowait(reply)
        self.out.put_nowait(_END)

    def _fail(self, message: str) -> None:
        self.metrics.errors.labels("stream_error").inc()
        self.out.put_nowait(pb.error_reply(message))
        self.out.put_nowait(_END)
