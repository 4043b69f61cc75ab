"""The engine loop's monitoring: host heartbeats and VM statuses.

Each cycle asks every host's agent for its facts (the heartbeat) and, on its
longer interval, for the VMs it runs. What a host does not answer is never
taken as an answer: a silent host goes Connecting, then NonResponsive once it
has been silent longer than the timeout, and only then are its VMs Unknown —
never Down on a guess (a partitioned host's VMs may well still run).

Each host is checked (heartbeat, then its VMs) in a thread of its own
(engine_lib.loop.host_tasks): a host whose agent hangs delays only itself,
never another host's heartbeat; it is skipped until its check returns.

Every status transition is recorded in the audit log. A VM's status follows
the rule of engine_lib.loop.vm_status, which the event follower applies too.

The VM poll is the agent's ``GET /stats``: the statuses, and the figures of the
host and its VMs, which engine_lib.loop.statistics records.

Device matching rides on the VM poll: the agent reports a hash of each VM's
devices; when it differs from the hash last matched, the engine reads the
live domain XML and correlates it with the database (engine_lib.devices).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from engine_lib import devices
from engine_lib.loop import guest_info, statistics, vm_status
from engine_lib.loop.host_tasks import HostTasks
from engine_lib.loop.vm_status import Report, forget_on_host
from engine_lib.model import Host, Vm
from engine_lib.protocol.errors import AgentUnreachable, KestrelError
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.services.common import audit, retry_on_conflict
from engine_lib.services.host_records import HostRef, record_capabilities
from engine_lib.services.storage_domains import connect_host, nfs_unreported

log = logging.getLogger("kestrel.engine.monitoring")

# Hosts in these statuses are not polled: an operator put them there.
# (PreparingForMaintenance too: a heartbeat must not turn it Up while its VMs leave.)
_NOT_POLLED = HostStatus.HELD | {HostStatus.INSTALLING, HostStatus.INSTALL_FAILED}


@dataclass(frozen=True)
class Intervals:
    """oVirt's defaults: hosts every 3 s, VM statistics every 15 s."""

    host_s: float = 3.0
    vm_s: float = 15.0
    # How long a host may stay silent (Connecting) before it is NonResponsive.
    non_responsive_after_s: float = 60.0
    # How long one heartbeat may wait. A cut link refuses nothing, so without a
    # bound of its own a heartbeat would wait the agent client's full deadline and
    # the host's silence would be noticed that much later.
    heartbeat_timeout_s: float = 10.0

    @property
    def heartbeat_wait_s(self) -> float:
        return min(self.heartbeat_timeout_s, max(1.0, self.non_responsive_after_s / 2))


class Monitor:
    def __init__(self, engine, intervals: Intervals = Intervals(),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.engine = engine
        self.intervals = intervals
        self.clock = clock
        self._last_vm_poll: dict[str, float] = {}  # host -> monotonic time of its last VM poll
        self._checks = HostTasks("monitoring")

    # -- one cycle -----------------------------------------------------------------------

    def cycle(self, poll_vms: bool | None = True, wait_s: float | None = None) -> None:
        """Heartbeat every host and sync the VMs of those that answered, each host in a
        thread of its own; wait for them at most ``wait_s`` (None: until they end).

        ``poll_vms`` None polls each host's VMs at the VM interval. A host whose previous
        check still runs is skipped this cycle (it owes no answer yet: its call is within
        its deadline).
        """
        now = time.monotonic()
        started = []
        for host in self._hosts():
            poll = poll_vms if poll_vms is not None else \
                now - self._last_vm_poll.get(host.name, float("-inf")) >= self.intervals.vm_s
            if self._checks.submit(host.name, functools.partial(self._check, host, poll)):
                started.append(host.name)
                if poll:
                    self._last_vm_poll[host.name] = now
            else:
                log.debug("host %s: its previous check still runs; skipped", host.name)
        self._checks.wait(started, wait_s)

    def _check(self, host: HostRef, poll_vms: bool) -> None:
        if self._heartbeat(host) is not None and poll_vms:
            self._sync_vms(host)

    def _hosts(self) -> list[HostRef]:
        with self.engine.store.transaction(commit=False) as session:
            return [HostRef.of(h) for h in session.scalars(
                select(Host).where(Host.status.not_in(_NOT_POLLED)).order_by(Host.name))]

    def _heartbeat(self, ref: HostRef) -> dict | None:
        try:
            facts = self.engine.agent(ref.address, ref.port).host_info(
                timeout=self.intervals.heartbeat_wait_s)
        except AgentUnreachable as err:
            self._record_silence(ref.name, err.message)
            return None
        except KestrelError as err:
            # The agent answered, but not sensibly: it is reachable, so not a
            # reason to suspect the host; say so and try again next cycle.
            log.warning("host %s answered the heartbeat with an error: %s", ref.name, err.message)
            return None
        if self._record_answer(ref.name, facts):
            connect_host(self.engine, ref.name)  # (re)mount its cluster's NFS domains
        return facts

    @retry_on_conflict
    def _record_answer(self, name: str, facts: dict) -> bool:
        """Whether the host's NFS domains need connecting: it came Up with this answer,
        or its agent no longer reports one (restarted, reinstalled)."""
        with self.engine.store.transaction() as session:
            host = _host(session, name)
            previous = host.status
            record_capabilities(host, facts, self.clock())
            if previous != HostStatus.UP:
                audit(session, "host", name, f"host is Up again (was {previous})")
                log.info("host %s is Up again (was %s)", name, previous)
            return host.status == HostStatus.UP and (previous != HostStatus.UP
                                                     or nfs_unreported(session, host))

    @retry_on_conflict
    def _record_silence(self, name: str, why: str) -> None:
        now = self.clock()
        with self.engine.store.transaction() as session:
            host = _host(session, name)
            silent_for = now - _aware(host.last_seen or now)
            if host.status == HostStatus.UP:
                host.status = HostStatus.CONNECTING
                audit(session, "host", name, f"host is Connecting: {why}", "warning")
                log.warning("host %s is Connecting: %s", name, why)
            elif (host.status == HostStatus.CONNECTING
                  and silent_for >= timedelta(seconds=self.intervals.non_responsive_after_s)):
                host.status = HostStatus.NON_RESPONSIVE
                audit(session, "host", name, f"host is NonResponsive: silent for "
                      f"{int(silent_for.total_seconds())}s ({why})", "error")
                log.error("host %s is NonResponsive: %s", name, why)
                vm_status.host_lost(session, host)

    def _sync_vms(self, ref: HostRef) -> None:
        # The engine's own view before the agent is asked: a VM whose row changes while
        # the agent answers (a migration switched it to this host, a start or a stop
        # wrote it) is judged next cycle, from a report newer than that change. oVirt's
        # monitoring skips reports older than a VM's last change for the same reason.
        versions_before = self._vm_versions(ref.name)
        try:  # one request: the VMs' statuses and the statistics of the host and its VMs
            polled = self.engine.agent(ref.address, ref.port).stats()
        except KestrelError as err:
            log.warning("could not poll the VMs of host %s: %s", ref.name, err.message)
            return
        self._record_statistics(ref.name, polled)
        reported = {vm["id"]: vm for vm in polled["vms"]}
        changed_devices: list[tuple[str, str]] = []
        went_down: list[str] = []
        ours: set[str] = set()
        try:
            with self.engine.store.transaction() as session:
                host = _host(session, ref.name)
                # Row locks (PostgreSQL): a module changing one of these VMs waits for
                # this short transaction instead of failing on a stale row version.
                for vm in session.scalars(select(Vm).where(
                        Vm.run_on_host_id == host.id, Vm.status.in_(VmStatus.ACTIVE))
                        .with_for_update()):
                    ours.add(vm.id)
                    if versions_before.get(vm.id) != vm.version:
                        continue  # changed while the agent answered: that report may predate it
                    report = reported.get(vm.id)
                    change = vm_status.judge(session, vm, host, Report.polled(report))
                    if change is not None and change.remove_from_host:
                        went_down.append(vm.id)
                    if _devices_changed(vm, report):
                        changed_devices.append((vm.id, report["devices_hash"]))
        except StaleDataError:
            # A module changed one of these VMs meanwhile; its write wins and the
            # next cycle reads the new state.
            log.info("VMs of host %s changed during the sync; retrying next cycle", ref.name)
            return
        # A Down VM the engine does not run on this host is a leftover (a host fenced
        # and back, a VM restarted elsewhere meanwhile): forget it there too.
        went_down += [vm_id for vm_id, report in reported.items()
                      if vm_id not in ours and report.get("status") == VmStatus.DOWN]
        for vm_id in went_down:
            forget_on_host(self.engine, ref, vm_id)
        # A running VM the engine does not run here: adopted, or destroyed as a stray copy.
        vm_status.settle_unowned(self.engine, ref, reported, ours)
        for vm_id, devices_hash in changed_devices:
            self._match_devices(ref, vm_id, devices_hash)
        guest_info.refresh(self.engine, ref, [vm_id for vm_id, report in reported.items()
                                              if report.get("status") == VmStatus.UP])

    def _record_statistics(self, host_name: str, polled: dict) -> None:
        """Figures in a transaction of their own: the status sync never waits on them,
        and a failure to record them must not stop it."""
        try:
            with self.engine.store.transaction() as session:
                statistics.record(session, _host(session, host_name), polled, self.clock())
        except Exception:
            log.exception("could not record the statistics of host %s", host_name)

    def _vm_versions(self, host_name: str) -> dict[str, int]:
        with self.engine.store.transaction(commit=False) as session:
            return dict(session.execute(
                select(Vm.id, Vm.version).join(Host, Vm.run_on_host_id == Host.id)
                .where(Host.name == host_name)).all())

    def _match_devices(self, ref: HostRef, vm_id: str, devices_hash: str) -> None:
        """The agent reports another devices hash: read the live XML and match it."""
        try:
            live_xml = self.engine.agent(ref.address, ref.port).vm_xml(vm_id)
        except KestrelError as err:
            log.warning("could not read the live XML of VM %s on host %s: %s",
                        vm_id, ref.name, err.message)
            return
        try:
            self._record_devices(ref.name, vm_id, live_xml, devices_hash)
        except KestrelError as err:  # a live XML we cannot read, or a row that kept changing
            log.warning("device matching of VM %s failed: %s", vm_id, err.message)

    @retry_on_conflict
    def _record_devices(self, host_name: str, vm_id: str, live_xml: str,
                        devices_hash: str) -> None:
        with self.engine.store.transaction() as session:
            vm = session.execute(select(Vm).where(Vm.id == vm_id).with_for_update()
                                 ).scalar_one_or_none()
            if vm is None or vm.run_on_host is None or vm.run_on_host.name != host_name:
                return  # removed, stopped or moved since the poll: that XML is not its truth
            _, notes = devices.match_vm(vm, live_xml)
            vm.devices_hash = devices_hash
            for severity, message in notes:
                audit(session, "vm", vm.name, message, severity)

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Cycle at the host interval, polling VMs at theirs, until ``stop`` is set."""
        stop = stop or threading.Event()
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.cycle(poll_vms=None, wait_s=self.intervals.host_s)
            except Exception:
                log.exception("monitoring cycle failed")
            stop.wait(max(0.0, self.intervals.host_s - (time.monotonic() - started)))


def _devices_changed(vm: Vm, report: dict | None) -> bool:
    """Whether the agent reports a devices hash other than the one last matched."""
    reported = (report or {}).get("devices_hash")
    return bool(reported) and vm.status != VmStatus.DOWN and reported != vm.devices_hash


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; all ours are UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _host(session, name: str) -> Host:
    return session.execute(select(Host).where(Host.name == name)).scalar_one()
