"""One thread owns the StreamEngine; sessions on the event loop talk to it through commands.

Every engine call runs on the worker thread, in the order submitted, so the engine needs no
locks. The thread applies every queued command, then runs one `step()` (one batched hop for
every stream whose next hop is ready) and hands each advanced stream's frames to that stream's
sink. A sink is called on the worker thread and must only hand the data over (e.g.
`loop.call_soon_threadsafe`): a slow client never holds up the engine.

A session holds a StreamHandle from the moment it asks for a stream: `open` and `close` are
commands run in order on this thread, so a close always runs after its open and frees the slot
the open took, whenever the session ends (cancelled mid-open included).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from ..streaming.engine import StepFailed, StreamEngine

log = logging.getLogger("emotalk_fast.serve")

# sink(frames [k, 52], emotion logits [labels], finished) or sink(None, exception, True)
Sink = Callable[[np.ndarray | None, object, bool], None]


class StreamHandle:
    """A session's claim on one engine stream; `sid` is set on the worker thread once open."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.sid: int | None = None
        self.closed = False


class EngineWorker:
    """A StreamEngine driven by its own thread; its async methods are for the event loop."""

    def __init__(self, engine: StreamEngine, on_step: Callable[[float, int], None] | None = None):
        self.engine = engine
        self.on_step = on_step  # (seconds, streams advanced) after every step that did work
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._open: dict[int, StreamHandle] = {}  # sid -> its handle (only this thread touches it)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emotalk-engine", daemon=True)
        self._thread.start()

    # --- what sessions call -----------------------------------------------------------------
    async def open(self, handle: StreamHandle, level, person, sample_rate: int) -> None:
        """Open an engine stream for `handle` (EngineFull, ValueError, TypeError as the engine's)."""
        await self._call(self._do_open, handle, level, person, sample_rate)

    def push(self, handle: StreamHandle, samples: np.ndarray) -> None:
        """Queue 16 kHz samples for the handle's stream and return at once (commands run in
        order, after its open): reading a client never waits for a step. Should the engine
        refuse them, the stream fails through its sink."""
        self._submit(self._do_push, handle, samples)

    async def flush(self, handle: StreamHandle) -> bool:
        """The end of the stream's audio -> whether it is already finished (no audio: no frames)."""
        def flush():
            self.engine.flush(handle.sid)
            return self.engine.finished(handle.sid)

        return await self._call(flush)

    def close(self, handle: StreamHandle) -> None:
        """Free the handle's stream, now or once its open has run; safe to call more than once,
        from anywhere (a cancelled session's `finally`)."""
        if not self._stopped.is_set():
            self._submit(self._do_close, handle)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._stopped.is_set():
            self._commands.put(None)
            self._thread.join(timeout)

    @property
    def live_streams(self) -> int:
        """Engine slots held (what the engine counts, whatever the sessions think)."""
        return self.engine.num_live

    @property
    def hop_s(self) -> float:
        return self.engine.settings.hop_ms / 1000

    @property
    def algorithmic_latency_s(self) -> float:
        """Audio a stream's frames trail its input by when the engine keeps up."""
        return self.engine.settings.latency_ms / 1000

    @property
    def emotion_labels(self) -> tuple[str, ...]:
        return self.engine.emotion_labels

    @property
    def num_persons(self) -> int:
        return self.engine.num_persons

    # --- commands ---------------------------------------------------------------------------
    def _submit(self, fn: Callable, *args) -> Future:
        if self._stopped.is_set():
            raise RuntimeError("the engine worker has stopped")
        future: Future = Future()
        self._commands.put((future, fn, args))
        return future

    async def _call(self, fn: Callable, *args):
        return await asyncio.wrap_future(self._submit(fn, *args))

    def _do_open(self, handle: StreamHandle, level, person, sample_rate: int) -> None:
        if handle.closed:  # closed before its open ran: take nothing
            return
        handle.sid = self.engine.open(level, person, sample_rate)
        self._open[handle.sid] = handle

    def _do_push(self, handle: StreamHandle, samples: np.ndarray) -> None:
        if handle.sid in self._open:
            try:
                self.engine.push(handle.sid, samples)
            except Exception as e:  # noqa: BLE001 - this stream's input: it ends, no other
                log.error("engine refused a stream's audio: %s: %s", type(e).__name__, e)
                self._fail(handle.sid, e)

    def _do_close(self, handle: StreamHandle) -> None:
        handle.closed = True
        if handle.sid is not None and self._open.pop(handle.sid, None) is not None:
            self.engine.close(handle.sid)

    # --- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        busy = False  # did the last command or step leave work to do?
        while True:
            try:
                item = self._commands.get(block=not busy)
            except queue.Empty:
                item = ()
            while item != ():
                if item is None:
                    self._stopped.set()
                    return
                future, fn, args = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as e:  # noqa: BLE001 - handed to the caller
                        future.set_exception(e)
                busy = True
                try:
                    item = self._commands.get_nowait()
                except queue.Empty:
                    item = ()
            busy = self._step() if busy else False

    def _step(self) -> bool:
        t0 = time.perf_counter()
        try:
            out = self.engine.step()
        except StepFailed as e:  # the failed groups' streams end; the others' frames go out
            log.error("engine fault: %s", e)
            for sid, error in e.failed.items():
                self._fail(sid, error)
            out = e.frames
        except Exception as e:  # noqa: BLE001 - outside any group: every live stream ends, the server stays
            log.error("engine fault outside any group, %d stream(s) ended: %s: %s", len(self._open),
                      type(e).__name__, e)
            for sid in list(self._open):
                self._fail(sid, e)
            return False
        if not out:
            return False
        if self.on_step is not None:
            self.on_step(time.perf_counter() - t0, len(out))
        for sid, frames in out.items():
            handle = self._open.get(sid)
            if handle is None:
                continue
            try:
                handle.sink(frames, self.engine.emotion_logits(sid), self.engine.finished(sid))
            except Exception:  # noqa: BLE001 - its receiver is gone (loop closed): drop the stream
                self._do_close(handle)
        return True

    def _fail(self, sid: int, error: BaseException) -> None:
        handle = self._open.get(sid)
        if handle is None:
            return
        self._do_close(handle)
        try:
            handle.sink(None, error, True)
        except Exception:  # noqa: BLE001 - its receiver is gone
            pass
