"""Run the agent: in the foreground, or as a classic double-fork daemon.

Hosts without systemd (lab hosts, containers) run ``kestrel-agent
--daemon --pidfile P``. Everything that can fail for a reason the operator
must see (config, certificates, a busy port, an agent already running)
happens before the fork, and the launching process exits only when the
daemon is serving, with the daemon's error if it could not start.

The pidfile is held with ``flock`` for the daemon's whole life: a second
agent finds it locked and refuses, while a stale pidfile (crashed agent,
recycled PID) is simply taken over.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from engine_lib.agent import config as agent_config
from engine_lib.agent.api import Api
from engine_lib.agent.server import AgentServer, server_context
from engine_lib.protocol import daemon
from engine_lib.protocol.errors import KestrelError

DEFAULT_LOG_FILE = "/var/log/kestrel/agent.log"
log = logging.getLogger("kestrel.agent")


def main(config_path: str = agent_config.DEFAULT_PATH, detach: bool = False,
         pidfile: str | None = None, log_file: str | None = None) -> int:
    """Serve the agent API until SIGTERM/SIGINT; returns the exit status.

    With ``detach=True`` the calling process returns 0 as soon as the daemon
    serves (or raises KestrelError with the daemon's reason) and the daemon
    itself returns when stopped.
    """
    config = agent_config.load(config_path)
    context = server_context(config)
    lock_fd = daemon.lock_pidfile(pidfile, "an agent") if pidfile else None
    try:
        server = AgentServer(config, context, Api(config))
    except KestrelError:
        if lock_fd is not None:  # we hold the lock: the pidfile is ours to remove
            os.unlink(pidfile)
            os.close(lock_fd)
        raise
    if detach:
        ready_fd = daemon.daemonize(lock_fd, "agent", in_parent=server.socket.close)
        if ready_fd is None:
            return 0  # the launching process: the daemon is up
        log_file = log_file or DEFAULT_LOG_FILE
    else:
        ready_fd = None
    try:
        daemon.setup_logging(log_file)
        if lock_fd is not None:
            daemon.write_pid(lock_fd)
    except OSError as exc:
        daemon.report_ready(ready_fd, f"cannot start: {exc}")
        raise KestrelError(f"agent cannot start: {exc}") from None
    server.api.start()  # after the fork: the libvirt event thread must live in the daemon
    daemon.report_ready(ready_fd, None)

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
