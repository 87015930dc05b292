"""One ProcessAudioStream call's state machine: header, audio, end, errors, replies.

The client's AudioStreamHeader opens a stream on the engine worker; each audio chunk is
decoded from 16-bit PCM, resampled to 16 kHz here (in a helper thread: never on the engine's
thread, never on the event loop) and queued for the engine without waiting for a step; the
worker hands back frames, which go out as AnimationData (the client's own audio for the same
span echoed beside them); after end_of_audio the last frames, then an
END_OF_A2F_AUDIO_PROCESSING event and a SUCCESS status.

Reading runs apart from replying (some clients write everything before they read) and every
buffer of a stream is bounded: audio read but not yet animated (reading pauses past
max_buffered_s: gRPC's flow control holds the client), input emotions waiting for audio, and
replies the client has not read (past the bound the call is cancelled: memory, never the
server). No reply is larger than max_reply_bytes: a long span is split across messages. The
idle timer measures the client's silence (messages that carry audio), not the server's backlog.
The session touches no tensor and no engine: only the worker.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import grpc

from ..io.audio import StreamingResampler
from ..model.config import FPS, SAMPLE_RATE
from ..streaming.engine import EngineFull
from . import protocol as pb
from .metrics import ServeMetrics
from .worker import EngineWorker, StreamHandle

log = logging.getLogger("emotalk_fast.serve")
# a stream this far behind real time, past its hop and lookahead, is logged once: a held stream
# trails by at most a hop's compute, so this means the machine does not keep up
LAG_WARNING_S = 1.0


@dataclass(frozen=True)
class SessionLimits:
    """What the server allows one stream."""

    max_audio_s: float  # longer streams end with INVALID_ARGUMENT
    idle_timeout_s: float  # no audio this long before end_of_audio: DEADLINE_EXCEEDED
    max_streams: int  # for the RESOURCE_EXHAUSTED message
    max_buffered_s: float = 10.0  # audio read but not animated yet; past it reading pauses
    max_input_emotion_bytes: int = 256 << 10  # input emotions waiting for audio to go out with
    max_reply_bytes: int = 1 << 20  # one reply (clients accept 4 MiB by default)
    max_unread_bytes: int = 128 << 20  # replies the client has not read: 10 min of 48 kHz echo fits


class Abort(Exception):
    """Ends one stream with a gRPC status code (where the protocol has no message)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


@dataclass(frozen=True)
class _End:
    """The session's last item: how it ended (for the log)."""

    outcome: str


class Session:
    """One ProcessAudioStream call: `run(requests)` yields its replies."""

    def __init__(self, worker: EngineWorker, limits: SessionLimits, metrics: ServeMetrics, context):
        self.worker, self.limits, self.metrics, self.context = worker, limits, metrics, context
        self.peer = context.peer()  # now: grpc's peer() on a call already cancelled can crash
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue = asyncio.Queue()  # (reply, its size), in order
        self.unread = 0  # bytes in `out`
        self.handle = StreamHandle(self._sink)
        self.style: pb.StreamStyle | None = None
        self.resampler: StreamingResampler | None = None  # client rate -> 16 kHz
        self.pcm = bytearray()  # the client's audio not yet echoed (whole samples)
        self.pcm_start = 0  # client sample index of pcm[0]
        self.odd_byte = b""  # half a sample carried to the next chunk
        self.received = 0  # client samples received
        self.total: int | None = None  # client samples in all, once end_of_audio came
        self.pushed = 0  # 16 kHz samples queued for the engine
        self.frames_done = 0  # frames the engine has made
        self.frames_sent = 0
        self.room = asyncio.Event()  # set when frames come back (reading may resume)
        self.input_emotions: list = []  # not yet echoed
        self.input_emotion_bytes = 0
        self.last_audio = time.monotonic()  # the client's last sign of life: a header, audio
        self.first_audio: float | None = None  # when the first audio came (real time starts)
        self.lag_warned = False
        self.paused = False  # reading waits for the engine (the client is not silent)
        self.ended = False  # end_of_audio received (reading has stopped)
        self.outcome = "cancelled by the client"  # how it ended, for the log

    async def run(self, requests):
        self.task = asyncio.current_task()  # cancelled when the client stops reading
        reader = asyncio.create_task(self._read(requests))
        watchdog = asyncio.create_task(self._watch_idle())
        try:
            while True:
                item = await self.out.get()
                if isinstance(item, _End):
                    self.outcome = item.outcome
                    return
                if isinstance(item, Abort):
                    self.outcome = f"{item.code.name}: {item.details}"
                    self.metrics.errors.labels(item.code.name.lower()).inc()
                    await self.context.abort(item.code, item.details)
                reply, size = item
                self.unread -= size
                self.metrics.bytes_out.inc(size)
                yield reply
        finally:
            reader.cancel()
            watchdog.cancel()
            self.worker.close(self.handle)  # runs after its open, whenever this ends
            if self.outcome != "SUCCESS":
                log.warning("stream from %s ended: %s", self.peer, self.outcome)

    # --- requests ---------------------------------------------------------------------------
    async def _read(self, requests) -> None:
        try:
            async for message in requests:
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
        except pb.MalformedMessage as e:
            self.out.put_nowait(Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
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
        if style.sample_rate != SAMPLE_RATE:  # designing its filter can take a moment: not on the loop
            self.resampler = await asyncio.to_thread(StreamingResampler, style.sample_rate, SAMPLE_RATE)
        try:
            await self.worker.open(self.handle, style.level, style.person, SAMPLE_RATE)
        except EngineFull:
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"all {self.limits.max_streams} streams are busy; retry later") from None
        except (ValueError, TypeError) as e:
            raise pb.StreamError(str(e)) from None
        self.style = style
        self.last_audio = time.monotonic()
        self.metrics.streams.inc()
        self._send(pb.header_reply(header.audio_header, time.time()))

    async def _on_audio(self, chunk) -> None:
        if self.style is None:
            raise pb.StreamError("audio_with_emotion before the audio_stream_header: send the header first")
        if chunk.emotions:
            self.input_emotion_bytes += sum(e.ByteSize() for e in chunk.emotions)
            limit = self.limits.max_input_emotion_bytes
            if self.input_emotion_bytes > limit:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"more than {limit // 1024} KiB of input emotions wait for audio to go out with: "
                            "send emotions beside the audio they belong to")
            self.input_emotions.extend(chunk.emotions)
        data = self.odd_byte + chunk.audio_buffer
        whole = len(data) - len(data) % 2
        self.odd_byte = data[whole:]
        if not whole:  # no audio: not a sign of life (an empty chunk cannot hold a slot)
            return
        self.last_audio = time.monotonic()
        if self.first_audio is None:
            self.first_audio = self.last_audio
        limit = self.limits.max_audio_s
        if self.received + whole // 2 > limit * self.style.sample_rate:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"the stream is longer than the server's limit of "
                                                          f"{limit:g} s of audio (--max-audio-s)")
        self.received += whole // 2
        self.pcm += data[:whole]
        await self._push(pb.pcm16_to_float(data[:whole]))

    async def _push(self, samples) -> None:
        """Client-rate samples (None: the end, the resampler's tail) -> 16 kHz (off the loop) ->
        the engine's queue; then, while the engine is more than max_buffered_s behind, wait (the
        client is held by flow control)."""
        if self.resampler is not None:
            step = self.resampler.flush if samples is None else lambda: self.resampler.push(samples)
            samples = await asyncio.to_thread(step)
        if len(samples):
            self.worker.push(self.handle, samples)
            self.pushed += len(samples)
        while self.pushed / SAMPLE_RATE - self.frames_done / FPS > self.limits.max_buffered_s:
            self.paused = True
            self.room.clear()
            await self.room.wait()
        if self.paused:
            self.paused, self.last_audio = False, time.monotonic()  # the wait was ours, not the client's

    async def _on_end(self) -> None:
        if self.style is None:
            raise pb.StreamError("end_of_audio before the audio_stream_header")
        if self.odd_byte:
            raise pb.StreamError("the audio ends in half a 16-bit sample (an odd number of bytes)")
        self.ended, self.total = True, self.received
        if self.resampler is not None:
            await self._push(None)
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
            if not (self.ended or self.paused) and time.monotonic() - self.last_audio > timeout:
                self.out.put_nowait(Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                          f"no audio for {timeout:g} s (--idle-timeout) before end_of_audio"))
                return

    # --- replies ----------------------------------------------------------------------------
    def _sink(self, frames, logits, finished) -> None:  # on the engine thread
        self.loop.call_soon_threadsafe(self._on_frames, frames, logits, finished)

    def _on_frames(self, frames, logits, finished) -> None:
        if frames is None:  # the engine failed on this stream's input or batch
            self._fail(f"internal error: {type(logits).__name__}: {logits}")
            return
        self.frames_done += len(frames)
        self.room.set()
        rate, f0 = self.style.sample_rate, self.frames_sent
        emotion = pb.emotion_probabilities(self.worker.emotion_labels, logits)
        values = self.style.apply(frames)
        # split so that no reply passes max_reply_bytes: ~300 bytes a frame, its audio, the emotions
        audio_bytes = 2 * (self._echo_end(f0 + len(frames), finished) - self.pcm_start)
        room = max(1, self.limits.max_reply_bytes - self.input_emotion_bytes - 1024)
        pieces = max(1, min(len(frames), math.ceil((300 * len(frames) + audio_bytes) / room)))
        cuts = [round(i * len(frames) / pieces) for i in range(pieces + 1)]
        for a, b in zip(cuts, cuts[1:]):
            echo_end = self._echo_end(f0 + b, finished and b == len(frames))
            audio = bytes(self.pcm[: 2 * (echo_end - self.pcm_start)])
            del self.pcm[: len(audio)]
            audio_start, self.pcm_start = self.pcm_start, echo_end
            self._send(pb.animation_reply(f0 + a, values[a:b], audio, audio_start / rate, self.input_emotions,
                                          emotion))
            self.input_emotions, self.input_emotion_bytes = [], 0
        self.frames_sent = f0 + len(frames)
        self.metrics.frames_out.inc(len(frames))
        if finished:
            self._finish()
        else:
            behind = self.received / rate - self.frames_sent / FPS - self.worker.algorithmic_latency_s
            self.metrics.backlog.observe(max(0.0, behind))
            self._check_lag(behind)

    def _check_lag(self, behind: float) -> None:
        """Log once when the stream's frames run more than a hop + LAG_WARNING_S behind real time.
        `behind` counts against the audio received; real time is the wall clock since the first
        audio where that is less (a client that sends faster than it speaks is not behind, one
        that pauses neither)."""
        if self.lag_warned or self.first_audio is None:
            return
        wall = time.monotonic() - self.first_audio - self.frames_sent / FPS - self.worker.algorithmic_latency_s
        lag = min(behind, wall)
        if lag > self.worker.hop_s + LAG_WARNING_S:
            self.lag_warned = True
            log.warning("stream from %s runs %.1f s behind real time: this machine does not keep up at these "
                        "settings (the start-up line says what they hold)", self.peer, lag)

    def _echo_end(self, frame: int, last: bool) -> int:
        """The client sample where the echo of frames up to `frame` ends (the last message takes
        the rest), never before what was already echoed."""
        end = self.total if last else min(frame * self.style.sample_rate // FPS, self.received)
        return max(end, self.pcm_start)

    def _send(self, reply) -> None:
        size = reply.ByteSize()
        self.out.put_nowait((reply, size))
        self.unread += size
        if self.unread > self.limits.max_unread_bytes:  # the client does not read: it cannot hear an error
            self.outcome = (f"cancelled: the client left {self.unread / 1e6:.1f} MB of replies unread "
                            f"(limit {self.limits.max_unread_bytes / 1e6:.1f} MB)")
            self.task.cancel()

    def _finish(self) -> None:
        for reply in pb.end_replies():
            self._send(reply)
        self.out.put_nowait(_End("SUCCESS"))

    def _fail(self, message: str) -> None:
        self.metrics.errors.labels("stream_error").inc()
        self._send(pb.error_reply(message))
        self.out.put_nowait(_End(f"ERROR: {message}"))
