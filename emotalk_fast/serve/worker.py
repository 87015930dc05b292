"""One thread owns the StreamEngine; the server's event loop talks to it through commands.

Every engine call (open, push, flush, close, step) runs on the worker thread, in order, so
the engine needs no locks. The thread applies every queued command, then runs one `step()`
(one batched hop for every stream whose next hop is ready) and hands each advanced stream's
frames to that stream's sink. A sink is called on the worker thread and must only hand the
data over (e.g. `loop.call_soon_threadsafe`): a slow client never holds up the engine.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from ..engine import StreamEngine

# sink(frames [k, 52], emotion logits [labels], finished) or sink(None, exception, True)
Sink = Callable[[np.ndarray | None, object, bool], None]


class EngineWorker:
    """A StreamEngine driven by its own thread. `call` from the event loop, `submit` from anywhere."""

    def __init__(self, engine: StreamEngine, on_step: Callable[[float, int], None] | None = None):
        self.engine = engine
        self.on_step = on_step  # (seconds, streams advanced) after every step that did work
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[int, Sink] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emotalk-engine", daemon=True)
        self._thread.start()

    # --- commands ---------------------------------------------------------------------------
    def submit(self, fn: Callable, *args) -> Future:
        """Run fn(*args) on the worker thread; its result or exception lands in the future."""
        if self._stopped.is_set():
            raise RuntimeError("the engine worker has stopped")
        future: Future = Future()
        self._commands.put((future, fn, args))
        return future

    async def call(self, fn: Callable, *args):
        return await asyncio.wrap_future(self.submit(fn, *args))

    async def open(self, sink: Sink, level, person, sample_rate: int) -> int:
        return await self.call(self._open, sink, level, person, sample_rate)

    def close_soon(self, sid: int) -> None:
        """Free the stream's slot without waiting (from a cancelled handler, say)."""
        if not self._stopped.is_set():
            self.submit(self._close, sid)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._stopped.is_set():
            self._commands.put(None)
            self._thread.join(timeout)

    @property
    def live_streams(self) -> int:
        return len(self._sinks)

    def _open(self, sink: Sink, level, person, sample_rate: int) -> int:
        sid = self.engine.open(level, person, sample_rate)
        self._sinks[sid] = sink
        return sid

    def _close(self, sid: int) -> None:
        if self._sinks.pop(sid, None) is not None:
            self.engine.close(sid)

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
        except Exception as e:  # noqa: BLE001 - a fault in the batch ends the streams in it, not the server
            for sid in list(self._sinks):
                sink = self._sinks.pop(sid)
                self.engine.close(sid)
                try:
                    sink(None, e, True)
                except Exception:  # noqa: BLE001 - its receiver is gone
                    pass
            return False
        if not out:
            return False
        if self.on_step is not None:
            self.on_step(time.perf_counter() - t0, len(out))
        for sid, frames in out.items():
            sink = self._sinks.get(sid)
            if sink is None:
                continue
            try:
                sink(frames, self.engine.emotion_logits(sid), self.engine.finished(sid))
            except Exception:  # noqa: BLE001 - its receiver is gone (loop closed): drop the stream
                self._close(sid)
        return True
