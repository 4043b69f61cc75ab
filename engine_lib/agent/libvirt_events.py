"""libvirt events for the agent: libvirtaio's asyncio loop, run in its own thread.

libvirt delivers domain events only to a process that registered an event
loop implementation before opening its connection. We use ``libvirtaio``
(it ships with libvirt-python) on an asyncio loop in a daemon thread, so the
registry learns of a guest that powered off the moment libvirt does, with no
polling.

libvirtaio expects every libvirt call to happen on its loop's thread; ours
happen on HTTP request threads too, and libvirt then adds or changes timers
and watches from those threads. The loop would not notice until its next
wake-up, so each such call also wakes it (``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import libvirt
import libvirtaio

log = logging.getLogger("kestrel.agent.events")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


class _ThreadAwareImpl(libvirtaio.virEventAsyncIOImpl):
    """libvirtaio's implementation, waking its loop when called from another thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._thread_id: int | None = None  # the loop's thread, set once it runs

    def _wake(self) -> None:
        if self._thread_id != threading.get_ident():
            self.loop.call_soon_threadsafe(_noop)

    def _add_handle(self, *args):
        result = super()._add_handle(*args)
        self._wake()
        return result

    def _update_handle(self, *args):
        super()._update_handle(*args)
        self._wake()

    def _remove_handle(self, *args):
        result = super()._remove_handle(*args)
        self._wake()
        return result

    def _add_timeout(self, *args):
        result = super()._add_timeout(*args)
        self._wake()
        return result

    def _update_timeout(self, *args):
        super()._update_timeout(*args)
        self._wake()

    def _remove_timeout(self, *args):
        result = super()._remove_timeout(*args)
        self._wake()
        return result


def _noop() -> None:
    pass


def ensure_loop() -> asyncio.AbstractEventLoop:
    """Start the event thread and register it with libvirt, once per process.

    Must run before the connection that wants events is opened. Call it in the
    process that serves (after a daemon's fork: threads do not survive fork).
    """
    global _loop
    with _lock:
        if _loop is not None:
            return _loop
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        impl = _ThreadAwareImpl(loop=loop)

        def serve() -> None:
            asyncio.set_event_loop(loop)
            impl._thread_id = threading.get_ident()
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, name="libvirt-events", daemon=True)
        thread.start()
        ready.wait()
        impl.register()
        libvirtaio._current_impl = impl  # what libvirtaio.getCurrentImpl() reports
        _loop = loop
        log.debug("libvirt event loop running in thread %s", thread.name)
        return loop


def watch_lifecycle(conn: libvirt.virConnect, callback) -> int:
    """Call ``callback(dom, event, detail)`` on every domain lifecycle event of ``conn``.

    Runs on the event thread; an exception in the callback is logged, never
    raised into libvirt.
    """
    def on_event(_conn, dom, event, detail, _opaque):
        try:
            callback(dom, event, detail)
        except Exception:
            log.exception("handling lifecycle event %s/%s failed", event, detail)

    return conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                       on_event, None)
