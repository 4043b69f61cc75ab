"""Who is acting: the user (and token) behind the current call.

The engine API sets it for each request and each job it runs; the engine loop acts as
"engine"; anything else (a module or command on the engine host, which holds the
database itself) acts as "local:<login>" with every permission. The audit log records
it, and engine_lib.services.access decides with it.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["ENGINE_LOOP", "Actor", "acting_as", "current", "process_default", "set_process_default"]


@dataclass(frozen=True)
class Actor:
    name: str
    # An API user (checked against permissions); None for the engine host's own callers.
    user_id: str | None = None
    token_id: str = ""
    # A token narrowed to one role: what it may do is that role's, within the user's.
    token_role: str = ""

    @property
    def is_local(self) -> bool:
        return self.user_id is None


ENGINE_LOOP = Actor("engine")

_CURRENT: ContextVar[Actor | None] = ContextVar("kestrel_actor", default=None)
# A new thread starts with no context: what its process is acts (the engine loop's threads).
_process_default: Actor | None = None


def _local() -> Actor:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry (containers)
        login = "unknown"
    return Actor(f"local:{login}")


def current() -> Actor:
    return _CURRENT.get() or _process_default or _local()


def set_process_default(actor: Actor) -> None:
    global _process_default
    _process_default = actor


@contextlib.contextmanager
def process_default(actor: Actor) -> Iterator[Actor]:
    """``actor`` for every thread of the process that sets none, until the block ends (so
    a process that ran the engine loop, a test run, does not go on acting as it)."""
    global _process_default
    previous, _process_default = _process_default, actor
    try:
        yield actor
    finally:
        _process_default = previous


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    token = _CURRENT.set(actor)
    try:
        yield actor
    finally:
        _CURRENT.reset(token)
