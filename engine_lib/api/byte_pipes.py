"""Bytes between the event loop (a request's body, a response's stream) and the worker
thread that runs the synchronous service, holding at most ``capacity`` bytes between
them: a disk image of any size crosses in bounded memory, and the faster side waits.

``Inbound``: the loop writes (``await put``), the thread reads (``read``, a file-like
object for the broker's upload). ``Outbound``: the thread writes (``write``, a file-like
object for the broker's export), the loop reads (``async for``). Either side can end
the pipe: the writer with ``finish(error)``, the reader with ``close()`` (then the
writer's next call says so, and the writer stops).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator

from engine_lib.protocol.errors import KestrelError
from engine_lib.services import job_context

__all__ = ["CAPACITY", "Inbound", "Outbound", "ReaderGone"]

CAPACITY = 4 << 20  # bytes waiting in a pipe at most (plus one piece)
IDLE_TIMEOUT = 60.0  # seconds a thread waits on the other side before giving up
_CANCEL_CHECK = 0.5  # seconds between cancel checks while a thread waits


class ReaderGone(KestrelError):
    """The other side stopped (a client that went away, an upload that ended early)."""


class _Pipe:
    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = CAPACITY):
        self._loop = loop
        self._capacity = capacity
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._closed = False
        self._wake = asyncio.Event()  # the loop side's turn: room, data, or an end

    def _signal(self) -> None:
        """From a thread (under the lock): wake the loop side."""
        self._loop.call_soon_threadsafe(self._wake.set)

    def _wait_thread(self, ready, what: str) -> None:
        """In the thread, under the lock: wait until ``ready()``, checking the job's
        cancel and giving up after IDLE_TIMEOUT without progress."""
        waited = 0.0
        while not ready():
            if waited >= IDLE_TIMEOUT:
                raise ReaderGone(f"no progress for {IDLE_TIMEOUT:g} s while {what}")
            self._cond.wait(_CANCEL_CHECK)
            waited += _CANCEL_CHECK
            job_context.check_cancelled(what)


class Inbound(_Pipe):
    """A request body on its way to a worker thread."""

    async def put(self, data: bytes) -> bool:
        """Queue ``data``; False when the reader is gone (stop sending)."""
        while True:
            with self._cond:
                if self._closed:
                    return False
                if self._buffered < self._capacity:
                    self._chunks.append(data)
                    self._buffered += len(data)
                    self._cond.notify_all()
                    return True
                self._wake.clear()
            await self._wake.wait()

    def finish(self, error: BaseException | None = None) -> None:
        """No more bytes; the reader raises ``error`` (if any) once it needs them."""
        with self._cond:
            self._eof = True
            self._error = self._error or error
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """The reader is done (whatever it read): a sender waiting for room stops."""
        with self._cond:
            self._closed = True
            self._signal()

    # -- the thread's file-like side --------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes, fewer only at the end; the writer's error raised."""
        with self._cond:
            # More than the pipe holds is never waited for: what it has is returned.
            wanted = min(size, self._capacity)
            self._wait_thread(lambda: self._eof or self._error is not None or (
                0 <= wanted <= self._buffered), "waiting for the request body")
            if self._error is not None and (size < 0 or self._buffered < size):
                raise self._error
            parts, wanted = [], self._buffered if size < 0 else min(size, self._buffered)
            while wanted:
                chunk = self._chunks.popleft()
                if len(chunk) > wanted:
                    self._chunks.appendleft(chunk[wanted:])
                    chunk = chunk[:wanted]
                parts.append(chunk)
                wanted -= len(chunk)
                self._buffered -= len(chunk)
            self._signal()
            return b"".join(parts)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class Outbound(_Pipe):
    """A response body coming from a worker thread."""

    def write(self, data: bytes) -> int:
        with self._cond:
            self._wait_thread(lambda: self._closed or self._buffered < self._capacity,
                              "waiting for the client to read")
            if self._closed:
                raise ReaderGone("the client stopped reading (it went away)")
            self._chunks.append(bytes(data))
            self._buffered += len(data)
            self._signal()
            return len(data)

    def flush(self) -> None:
        pass

    def finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._eof = True
            self._error = self._error or error
            self._signal()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The chunks as they come; the writer's error raised after what it sent."""
        while True:
            with self._cond:
                if self._chunks:
                    chunk = self._chunks.popleft()
                    self._buffered -= len(chunk)
                    self._cond.notify_all()
                elif self._eof:
                    if self._error is not None:
                        raise self._error
                    return
                else:
                    chunk = b""
                    self._wake.clear()
            if chunk:
                yield chunk
            else:
                await self._wake.wait()
