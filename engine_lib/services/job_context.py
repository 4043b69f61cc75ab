"""The long operation a service call runs in, if any: where it reports progress and
learns that its user cancelled it.

The engine API runs long operations (a start, a migration, an upload, a maintenance)
as jobs and sets the handle; everywhere else the handle does nothing and is never
cancelled. A service checks for cancellation only where stopping leaves nothing
half-done (between steps, or while it waits on an agent it can tell to stop).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol

from engine_lib.protocol.errors import Cancelled

__all__ = ["JobHandle", "check_cancelled", "current", "part", "running"]


class JobHandle(Protocol):
    def progress(self, percent: int, phase: str = "") -> None:
        """Record how far the operation is (0-100) and what it does now."""

    def cancel_requested(self) -> bool:
        """Whether the job's user asked to cancel it."""


class _NoJob:
    def progress(self, percent: int, phase: str = "") -> None:
        pass

    def cancel_requested(self) -> bool:
        return False


_CURRENT: ContextVar[JobHandle | None] = ContextVar("kestrel_job", default=None)


def current() -> JobHandle:
    return _CURRENT.get() or _NoJob()


def check_cancelled(what: str) -> None:
    """Raise Cancelled if the current job's user cancelled it; ``what`` names the step."""
    if current().cancel_requested():
        raise Cancelled(f"cancelled by its user: {what}")


@contextlib.contextmanager
def running(handle: JobHandle) -> Iterator[JobHandle]:
    token = _CURRENT.set(handle)
    try:
        yield handle
    finally:
        _CURRENT.reset(token)


class _Part:
    """One step of a larger job: its 0-100 maps onto [start, end] of the job's progress."""

    def __init__(self, outer: JobHandle, start: int, end: int, prefix: str):
        self.outer, self.start, self.end, self.prefix = outer, start, end, prefix

    def progress(self, percent: int, phase: str = "") -> None:
        percent = max(0, min(100, percent))
        phase = f"{self.prefix}: {phase}" if self.prefix and phase else self.prefix or phase
        self.outer.progress(self.start + (self.end - self.start) * percent // 100, phase)

    def cancel_requested(self) -> bool:
        return self.outer.cancel_requested()


@contextlib.contextmanager
def part(start: int, end: int, prefix: str = "") -> Iterator[JobHandle]:
    """Run one step of the current job (a migration of a maintenance, say) as if it were
    the whole: its progress lands between ``start`` and ``end``, its phases get ``prefix``."""
    with running(_Part(current(), start, end, prefix)) as handle:
        yield handle
