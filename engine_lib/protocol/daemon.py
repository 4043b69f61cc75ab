"""Classic double-fork daemons with a locked pidfile: the agent and the engine loop.

For hosts without systemd. Everything that can fail for a reason the operator
must see happens before the fork, and the launching process returns only when
the daemon reports ready (or with the daemon's own error).

The pidfile is held with ``flock`` for the daemon's whole life: a second
instance finds it locked and refuses, while a stale pidfile (crashed daemon,
recycled PID) is simply taken over. Standard library only.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from collections.abc import Callable

from engine_lib.protocol.errors import KestrelError


def lock_pidfile(path: str, what: str) -> int:
    """Lock (creating) the pidfile; ``what`` names the daemon in the refusal."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise KestrelError(f"{what} is already running (pid {owner}, pidfile {path})",
                           pidfile=path, pid=owner) from None
    return fd


def write_pid(lock_fd: int) -> None:
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())


def daemonize(lock_fd: int | None, what: str,
              in_parent: Callable[[], None] = lambda: None) -> int | None:
    """Double fork. Returns None in the launching process, the readiness fd in the daemon.

    ``in_parent`` releases what the launching process must not keep (a
    listening socket). The launching process raises the daemon's error, if any.
    """
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child:
        os.close(write_fd)
        message = b""
        while chunk := os.read(read_fd, 4096):
            message += chunk
        os.close(read_fd)
        os.waitpid(child, 0)
        in_parent()
        if lock_fd is not None:
            os.close(lock_fd)  # the daemon keeps its own reference: the lock stays
        if message != b"ok":
            raise KestrelError(message.decode(errors="replace") or f"the {what} daemon died "
                               "before it was ready (see its log file)")
        return None
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return write_fd


def report_ready(fd: int | None, error: str | None) -> None:
    if fd is None:
        return
    os.write(fd, b"ok" if error is None else error.encode())
    os.close(fd)


def setup_logging(log_file: str | None) -> None:
    """Log kestrel's loggers to ``log_file``, or to stderr without one."""
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("kestrel")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
