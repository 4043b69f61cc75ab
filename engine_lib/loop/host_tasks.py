"""At most one task per host at a time, each in a thread of its own.

The loop talks to many hosts; an agent that hangs (a stopped process, a cut
link, a trickle) holds its call until the call's deadline. In a thread of its
own it holds only that host: the other hosts' heartbeats, VM polls and fencing
go on, and the busy host is skipped until its task returns (every agent call
and fence action has a bound, so it does). A thread per task rather than a
fixed pool: a pool of N is stalled by N hung hosts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("kestrel.engine.tasks")


class HostTasks:
    def __init__(self, what: str):
        self.what = what  # "monitoring", "fencing": for thread names and logs
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def submit(self, host: str, task: Callable[[], object]) -> bool:
        """Start ``task`` for ``host``; False (and nothing started) while the host's
        previous task still runs."""
        with self._lock:
            if self.busy(host):
                return False
            thread = threading.Thread(target=self._run, args=(host, task), daemon=True,
                                      name=f"{self.what}-{host}")
            self._threads[host] = thread
            thread.start()
            return True

    def busy(self, host: str) -> bool:
        thread = self._threads.get(host)
        return thread is not None and thread.is_alive()

    def wait(self, hosts: Iterable[str], timeout: float | None = None) -> list[str]:
        """Wait for the tasks of ``hosts``, at most ``timeout`` s in all (None: until they
        end); the hosts whose task still runs."""
        hosts = list(hosts)
        deadline = None if timeout is None else time.monotonic() + timeout
        for host in hosts:
            thread = self._threads.get(host)
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return [host for host in hosts if self.busy(host)]

    def _run(self, host: str, task: Callable[[], object]) -> None:
        try:
            task()
        except Exception:
            log.exception("%s of host %s failed", self.what, host)
