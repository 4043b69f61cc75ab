"""The engine loop's event follower: VM status changes reach the database at once.

The Monitor polls VM statuses every 15 s (oVirt's interval); a guest that
powers itself off would stay "Up" in the engine until then. The follower
long-polls every Up host's event stream (agent ``GET /events``) in a thread
of its own and applies each change the moment the agent reports it, by the
rule the Monitor's poll applies too (engine_lib.loop.vm_status: audit entries,
a VM only ever goes Down because its host said so).

It never judges a host: a host that does not answer is retried with a growing
pause, and its status stays the Monitor's business (heartbeats). An agent
that restarted (new ``instance``) or that no longer keeps the events asked
for (``gap``) is caught up from its latest status per VM, not from history.
A VM that went Down is removed from its host (agent ``DELETE``), as a stop
through the engine does, once its exit reason is recorded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import select

from engine_lib.loop import vm_status
from engine_lib.loop.vm_status import Report, forget_on_host
from engine_lib.model import Host, Vm
from engine_lib.protocol.errors import KestrelError
from engine_lib.protocol.statuses import HostStatus
from engine_lib.services.common import retry_on_conflict
from engine_lib.services.host_records import HostRef

log = logging.getLogger("kestrel.engine.events")

POLL_TIMEOUT_S = 30.0
HOSTS_INTERVAL_S = 3.0
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def latest_per_vm(events: list[dict]) -> list[dict]:
    """Each VM's last event, in stream order: what is true now, without the history."""
    last = {event["vm_id"]: event for event in events}
    return sorted(last.values(), key=lambda event: event["seq"])


class HostFollower:
    """Follows one host's event stream until ``stop`` is set."""

    def __init__(self, engine, host: HostRef, poll_timeout: float = POLL_TIMEOUT_S,
                 on_applied: Callable[[str, list[dict]], None] | None = None):
        self.engine = engine
        self.host = host
        self.poll_timeout = poll_timeout
        self.stop = threading.Event()
        self.on_applied = on_applied  # a seam for tests and metrics
        self.instance: str | None = None
        self.seq = 0

    def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                answer = self.engine.agent(self.host.address, self.host.port).events(
                    self.seq, self.poll_timeout)
            except KestrelError as err:
                pause = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                if failures == 0:
                    log.warning("event stream of host %s: %s; retrying", self.host.name,
                                err.message)
                failures += 1
                self.stop.wait(pause)
                continue
            failures = 0
            try:
                self.handle(answer)
            except Exception:
                log.exception("applying events of host %s failed", self.host.name)
                self.stop.wait(BACKOFF_S[0])

    def handle(self, answer: dict) -> None:
        """Apply one answer of the agent's event stream."""
        events = answer.get("events") or []
        if answer["instance"] != self.instance:
            if self.instance is not None and self.seq > 0:
                # The agent restarted: our number means nothing to it. Ask again from 0.
                log.info("host %s: agent restarted; catching up", self.host.name)
                self.instance, self.seq = None, 0
                return
            events = latest_per_vm(events)
        elif answer.get("gap"):
            log.warning("host %s: events were lost; catching up from the latest status",
                        self.host.name)
            events = latest_per_vm(events)
        if events:
            for vm_id in self.apply(events):
                self.forget(vm_id)
        self.instance, self.seq = answer["instance"], answer["seq"]
        if self.on_applied is not None:
            self.on_applied(self.host.name, events)

    @retry_on_conflict
    def apply(self, events: list[dict]) -> list[str]:
        """Apply the events in one transaction; the ids of the VMs that went Down."""
        down = []
        with self.engine.store.transaction() as session:
            host = session.execute(select(Host).where(Host.name == self.host.name)
                                   ).scalar_one_or_none()
            if host is None:
                return down
            for event in events:
                vm = session.get(Vm, event["vm_id"])
                if vm is None:
                    continue
                change = vm_status.judge(session, vm, host, Report.pushed(event))
                if change is None:
                    continue  # history (a VM that moved on, a stale MigratingTo), or known
                if change.remove_from_host:
                    down.append(vm.id)
                log.info("VM %s: %s%s (event %s of host %s)", vm.name, event["status"],
                         f" ({event['exit_reason']})" if event.get("exit_reason") else "",
                         event["seq"], host.name)
        return down

    def forget(self, vm_id: str) -> None:
        forget_on_host(self.engine, self.host, vm_id)


class EventFollower:
    """One HostFollower thread per Up host, kept in line with the hosts table."""

    def __init__(self, engine, poll_timeout: float = POLL_TIMEOUT_S,
                 hosts_interval: float = HOSTS_INTERVAL_S):
        self.engine = engine
        self.poll_timeout = poll_timeout
        self.hosts_interval = hosts_interval
        self._followers: dict[HostRef, tuple[HostFollower, threading.Thread]] = {}

    def run(self, stop: threading.Event | None = None) -> None:
        """Follow every Up host until ``stop`` is set; then stop every thread."""
        stop = stop or threading.Event()
        try:
            while not stop.is_set():
                try:
                    self.sync_hosts()
                except Exception:
                    log.exception("listing hosts for the event follower failed")
                stop.wait(self.hosts_interval)
        finally:
            self.stop_all()

    def sync_hosts(self) -> None:
        with self.engine.store.transaction(commit=False) as session:
            wanted = {HostRef.of(h) for h in session.scalars(
                select(Host).where(Host.status == HostStatus.UP))}
        for ref in list(self._followers):
            follower, thread = self._followers[ref]
            if ref not in wanted or not thread.is_alive():
                follower.stop.set()
                del self._followers[ref]
        for ref in wanted - set(self._followers):
            follower = HostFollower(self.engine, ref, self.poll_timeout)
            thread = threading.Thread(target=follower.run, name=f"events-{ref.name}",
                                      daemon=True)
            thread.start()
            self._followers[ref] = (follower, thread)

    def stop_all(self, join_s: float = 1.0) -> None:
        """Stop every follower; a thread still inside a long poll ends when it returns."""
        for follower, _ in self._followers.values():
            follower.stop.set()
        for _, thread in self._followers.values():
            thread.join(join_s)
        self._followers.clear()
