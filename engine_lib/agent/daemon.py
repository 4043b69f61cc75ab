"""Run the agent: in the foreground, or as a classic double-fork daemon.

Hosts without systemd (lab hosts, containers) run ``kestrel agent run
--daemon --pidfile P``. Everything that can fail for a reason the operator
must see (config, certificates, a busy port, an agent already running)
happens before the fork, and the launching process exits only when the
daemon is serving, with the daemon's error if it could not start.

The pidfile is held with ``flock`` for the daemon's whole life: a second
agent finds it locked and refuses, while a stale pidfile (crashed agent,
recycled PID) is simply taken over.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading

from engine_lib.agent import config as agent_config
from engine_lib.agent.api import Api
from engine_lib.agent.server import AgentServer, server_context
from engine_lib.errors import KestrelError

DEFAULT_LOG_FILE = "/var/log/kestrel/agent.log"
log = logging.getLogger("kestrel.agent")


def main(config_path: str = agent_config.DEFAULT_PATH, daemon: bool = False,
         pidfile: str | None = None, log_file: str | None = None) -> int:
    """Serve the agent API until SIGTERM/SIGINT; returns the exit status.

    With ``daemon=True`` the calling process returns 0 as soon as the daemon
    serves (or raises KestrelError with the daemon's reason) and the daemon
    itself returns when stopped.
    """
    config = agent_config.load(config_path)
    context = server_context(config)
    lock_fd = _lock_pidfile(pidfile) if pidfile else None
    try:
        server = AgentServer(config, context, Api(config))
    except KestrelError:
        if lock_fd is not None:  # we hold the lock: the pidfile is ours to remove
            os.unlink(pidfile)
            os.close(lock_fd)
        raise
    if daemon:
        ready_fd = _daemonize(server, lock_fd)
        if ready_fd is None:
            return 0  # the launching process: the daemon is up
        log_file = log_file or DEFAULT_LOG_FILE
    else:
        ready_fd = None
    try:
        _setup_logging(log_file)
        if lock_fd is not None:
            os.ftruncate(lock_fd, 0)
            os.write(lock_fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        _report_ready(ready_fd, f"cannot start: {exc}")
        raise KestrelError(f"agent cannot start: {exc}") from None
    server.api.start()  # after the fork: the libvirt event thread must live in the daemon
    _report_ready(ready_fd, None)

    def stop(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("agent %s listening on %s:%d (libvirt %s)", config.name, config.address,
             config.port, config.libvirt_uri)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.api.close()
        if lock_fd is not None:
            os.unlink(pidfile)
            os.close(lock_fd)
        log.info("agent stopped")
    return 0


def _lock_pidfile(path: str) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise KestrelError(f"an agent is already running (pid {owner}, pidfile {path})",
                           pidfile=path, pid=owner) from None
    return fd


def _daemonize(server: AgentServer, lock_fd: int | None) -> int | None:
    """Double fork. Returns None in the launching process, the readiness fd in the daemon."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child:
        os.close(write_fd)
        message = b""
        while chunk := os.read(read_fd, 4096):
            message += chunk
        os.close(read_fd)
        os.waitpid(child, 0)
        server.socket.close()
        if lock_fd is not None:
            os.close(lock_fd)  # the daemon keeps its own reference: the lock stays
        if message != b"ok":
            raise KestrelError(message.decode(errors="replace") or "the agent daemon died "
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


def _report_ready(fd: int | None, error: str | None) -> None:
    if fd is None:
        return
    os.write(fd, b"ok" if error is None else error.encode())
    os.close(fd)


def _setup_logging(log_file: str | None) -> None:
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("kestrel")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
