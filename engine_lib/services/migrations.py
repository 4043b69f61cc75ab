"""Live migration, engine side: choose the destination, drive both agents, settle the truth.

The order is what keeps "never two copies, never none":
1. one transaction picks the destination (the cluster's policy; the migration
   filter excludes the current host), writes the attempt to ``migrations`` and
   marks the VM MigratingFrom - run_on_host stays the source;
2. the destination agent prepares an incoming VM (hooks, volumes, its paths);
3. the source agent starts a peer-to-peer migration and reports progress,
   which is recorded; a destination agent that stops answering meanwhile gets
   the migration cancelled (the engine could not watch the VM there);
4. the result is never taken on trust: success switches run_on_host only once
   the destination reports the VM running; any other end asks both agents where
   the VM runs, drops an incoming copy that never resumed, and only then
   records the VM Up on its source and raises MigrationFailed. A call whose
   answer was lost (a timeout) decides nothing: a migrate request that may have
   reached the source is followed like any other, and a migration whose
   destination cannot say whether it runs the VM stays running in the
   database (the engine loop settles it once the agents answer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from engine_lib import devices
from engine_lib.domxml import render
from engine_lib.model import Migration, Vm, utcnow
from engine_lib.protocol import convergence
from engine_lib.protocol.errors import (
    AgentUnreachable,
    Cancelled,
    Conflict,
    HostNotFound,
    InvalidSpec,
    KestrelError,
    MigrationFailed,
    NotFound,
    NoValidHost,
    VmNotFound,
)
from engine_lib.protocol.statuses import VmStatus
from engine_lib.scheduling import place
from engine_lib.services import cluster_facts, job_context
from engine_lib.services.common import (
    as_utc,
    audit,
    get_vm,
    outcome_unknown,
    retry_on_conflict,
)
from engine_lib.services.host_records import HostRef
from engine_lib.services.results import Outcome
from engine_lib.services.scheduling_facts import scheduling_request
from engine_lib.store import lock_cluster

log = logging.getLogger("kestrel.migrations")

# libvirt daemons talk to each other directly (peer to peer): over plain TCP, or over
# TLS (port 16514, certificates from the engine CA: the host role's libvirt TLS) when
# the cluster encrypts migrations; QEMU's migration stream then uses TLS too.
DESTINATION_URIS = {False: "qemu+tcp://{address}/system", True: "qemu+tls://{address}/system"}
LIBVIRT_TLS_PORT = 16514
POLL = 0.2
PROGRESS_WRITE_INTERVAL = 1.0
DESTINATION_CHECK_INTERVAL = 1.0
# How long to wait for an agent's answer while a migration runs, and for an agent
# that restarts to answer again before deciding from what the other one says.
QUICK_TIMEOUT = 5.0
SETTLE_TIMEOUT = 60.0
RUNNING_STATES = {"running", "blocked", "paused"}
RESUMED_STATES = RUNNING_STATES - {"paused"}
# A running attempt another process started is left to it for this long (it may be
# between writing the row and asking the agents).
ORPHAN_AFTER = 60.0


@dataclass
class Plan:
    id: int | None
    vm: str
    vm_id: str
    source: HostRef
    destination: HostRef
    policy: str
    bandwidth_mbps: int
    xml: str
    started: float
    encrypted: bool = False
    # The job's user asked to cancel it (job_context): it ends cancelled, not failed.
    cancelled_by_user: bool = False

    def entity(self, status: str, **extra) -> dict:
        return {"vm": self.vm, "source": self.source.name,
                "destination": self.destination.name, "status": status, "downtime_ms": None,
                "duration_s": round(time.monotonic() - self.started, 3), "policy": self.policy,
                "policy_limit_ms": convergence.limit_of(self.policy),
                "bandwidth_mbps": self.bandwidth_mbps, "encrypted": self.encrypted,
                "progress": {}, "id": self.id, **extra}


def migration_dict(row: Migration) -> dict:
    return {"id": row.id, "vm": row.vm_name, "source": row.source,
            "destination": row.destination, "status": row.status,
            "downtime_ms": row.downtime_ms, "duration_s": row.duration_s,
            "policy": row.policy, "policy_limit_ms": convergence.limit_of(row.policy),
            "bandwidth_mbps": row.bandwidth_mbps, "encrypted": bool(row.encrypted),
            "progress": dict(row.progress or {}),
            "error": row.error, "started_at": row.started_at.isoformat(),
            "finished_at": row.finished_at.isoformat() if row.finished_at else None}


def _final_progress(report: dict, row: Migration) -> dict:
    """The last progress sample, with what the convergence policy did on the way: its
    steps (downtime raised, post-copy, abort — each with the stall that caused it) and
    whether the guest finished in post-copy."""
    final = dict(report.get("progress") or row.progress or {})
    if "steps" in report:
        final["policy_steps"] = list(report["steps"])
        final["postcopy"] = bool(report.get("postcopy"))
    return final


def percent_done(progress: dict) -> int:
    """How far a migration is, from the source's data processed and still to send; 99 at
    most while it runs (dirtied pages are sent again, so the end is known only at the end)."""
    done = float(progress.get("data_processed_mib") or 0)
    left = float(progress.get("data_remaining_mib") or 0)
    return min(99, int(100 * done / (done + left))) if done + left > 0 else 0


def mibps(bandwidth_mbps: int) -> int | None:
    """Mbps (oVirt's unit) -> libvirt's MiB/s, at least 1; 0 means no limit."""
    return max(1, round(bandwidth_mbps * 1_000_000 / 8 / 1024 / 1024)) if bandwidth_mbps else None


def destination_uri(address: str, encrypted: bool) -> str:
    """The destination libvirtd's URI; the host part is the address the host's libvirt
    certificate names (the host role signs it for the host's name and address)."""
    host = f"[{address}]" if ":" in address else address  # an IPv6 literal
    return DESTINATION_URIS[bool(encrypted)].format(address=host)


def _tls_hint(encrypted: bool, error: str) -> str:
    """Say what an encrypted migration needs when libvirt's error is about TLS."""
    lowered = error.lower()
    if not encrypted or not any(word in lowered for word in (
            str(LIBVIRT_TLS_PORT), "tls", "certificate", "x509")):
        return ""
    return (f" (the cluster encrypts migrations: the destination's libvirtd must accept TLS "
            f"on port {LIBVIRT_TLS_PORT} with a certificate from the engine CA, as the "
            f"kestrel.virt.host role sets up with kestrel_host_libvirt_tls)")


class MigrationService:
    def __init__(self, engine):
        self.engine = engine
        self._followed: set[int] = set()
        self._lock = threading.Lock()

    # -- API ---------------------------------------------------------------------------

    def migrate(self, vm: str, *, host: str | None = None, policy: str | None = None,
                bandwidth_mbps: int | None = None, wait: bool = True, timeout: float = 600,
                check_mode: bool = False,
                progress: Callable[[dict], None] | None = None) -> Outcome:
        if policy is not None:
            convergence.check_policy(policy)
        if bandwidth_mbps is not None and (isinstance(bandwidth_mbps, bool)
                                           or not isinstance(bandwidth_mbps, int)
                                           or bandwidth_mbps < 0):
            raise InvalidSpec("bandwidth_mbps", f"must be a whole number of Mbps, 0 for no "
                                                f"limit (got {bandwidth_mbps!r})")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidSpec("timeout", f"must be a positive number of seconds "
                                         f"(got {timeout!r})")
        if not check_mode:
            job_context.check_cancelled(f"migration of VM '{vm}' before it started; nothing "
                                        "was changed")
        plan = self._plan(vm, host, policy, bandwidth_mbps, check_mode)
        if check_mode:
            return Outcome(True, plan.entity("succeeded"))
        job_context.current().progress(0, f"migrating to {plan.destination.name}")
        try:
            self._start(plan)
        except KestrelError as err:
            return self._settle(plan, None, f"could not start: {err.message}")
        if not wait:
            threading.Thread(target=self._follow_quietly, args=(plan, timeout), daemon=True,
                             name=f"migration-{plan.id}").start()
            return Outcome(True, plan.entity("running"))
        outcome = self._follow(plan, timeout, progress)
        if plan.cancelled_by_user and outcome.entity.get("status") == "cancelled":
            raise Cancelled(f"cancelled by its user: migration of VM '{plan.vm}' from "
                            f"{plan.source.name} to {plan.destination.name} was aborted; the "
                            f"VM runs on {plan.source.name}", vm=plan.vm,
                            source=plan.source.name, destination=plan.destination.name,
                            migration=outcome.entity)
        return outcome

    def cancel(self, vm: str) -> Outcome:
        """Abort the VM's running migration; the VM keeps running on its source."""
        with self.engine.store.transaction(commit=False) as session:
            vm_row = get_vm(session, vm)
            row = self._running_row(session, vm_row.id)
            if row is None:
                return Outcome(False, None)
            entity, vm_id = migration_dict(row), vm_row.id
            source = HostRef.of(vm_row.run_on_host)
        try:
            self.engine.agent(source.address, source.port).cancel_migration(vm_id)
        except NotFound:
            pass  # it ended meanwhile; its follower settles it
        with self.engine.store.transaction() as session:
            audit(session, "vm", vm, f"migration to {entity['destination']}: cancel requested")
        entity["status"] = "cancelling"
        return Outcome(True, entity)

    def active(self) -> list[dict]:
        """Migrations running now. One nobody in this process follows (its caller did not
        wait, or exited) is settled here once its source agent says it ended."""
        with self.engine.store.transaction(commit=False) as session:
            rows = list(session.scalars(select(Migration).where(Migration.status == "running")
                                        .order_by(Migration.id)))
            now = utcnow()
            orphans = [self._plan_of(session, row) for row in rows
                       if row.id not in self._followed
                       and (now - as_utc(row.started_at)).total_seconds() > ORPHAN_AFTER]
            result = [migration_dict(row) for row in rows]
        for plan in orphans:
            if plan is None:
                continue
            try:
                report = self.engine.agent(plan.source.address,
                                           plan.source.port).migration(plan.vm_id)
            except NotFound:
                report = None
            except AgentUnreachable:
                continue  # no word from the source: nothing is settled on a guess
            if report is None or report.get("status") != "running":
                try:
                    self._settle(plan, report, "ended while nobody followed it")
                except KestrelError:
                    pass
        ended = {plan.id for plan in orphans if plan is not None}
        return [m for m in result if m["id"] not in ended or self._still_running(m["id"])]

    def history(self, vm: str) -> list[dict]:
        """Every migration attempt of a VM, oldest first."""
        with self.engine.store.transaction(commit=False) as session:
            vm_id = get_vm(session, vm).id
            return [migration_dict(row) for row in session.scalars(
                select(Migration).where(Migration.vm_id == vm_id).order_by(Migration.id))]

    # -- planning ------------------------------------------------------------------------

    # The engine loop writes the same VM rows (statuses, devices, guest data): the
    # migration's own writes are re-done on a fresh read when one of them came first.
    @retry_on_conflict
    def _plan(self, name: str, host: str | None, policy: str | None,
              bandwidth_mbps: int | None, check_mode: bool) -> Plan:
        with self.engine.store.transaction(commit=not check_mode) as session:
            vm = get_vm(session, name)
            if vm.status in (VmStatus.MIGRATING_FROM, VmStatus.MIGRATING_TO) or \
                    self._running_row(session, vm.id) is not None:
                raise Conflict(f"VM '{name}' is already migrating", vm=name)
            if vm.status != VmStatus.UP or vm.run_on_host is None:
                raise Conflict(f"VM '{name}' is {vm.status}, not Up: only a running VM "
                               "migrates live", vm=name, status=vm.status)
            source = vm.run_on_host
            cluster = lock_cluster(session, vm.cluster_id)
            facts = cluster_facts.load(session, cluster)
            candidates = facts.hosts
            if host is not None:
                if host == source.name:
                    raise InvalidSpec("host", f"VM '{name}' already runs on host '{host}'")
                candidates = [h for h in facts.hosts if h.name == host]
                if not candidates:
                    raise HostNotFound(host)
            decision = place(scheduling_request(vm, current_host=source.name), candidates,
                             facts.policy, facts.context)
            if decision.host is None:
                raise NoValidHost(name, decision.explain())
            dest_name = candidates[decision.host_index].name
            destination = next(h for h in cluster.hosts if h.name == dest_name)
            policy = policy or cluster.migration_policy or convergence.DEFAULT_POLICY
            bandwidth = cluster.migration_bandwidth_mbps if bandwidth_mbps is None \
                else bandwidth_mbps
            plan = Plan(None, name, vm.id, HostRef.of(source), HostRef.of(destination),
                        policy, bandwidth or 0, render(vm), time.monotonic(),
                        bool(cluster.migration_encrypted))
            if check_mode:
                return plan
            row = Migration(vm_id=vm.id, vm_name=name, source=source.name,
                            destination=dest_name, status="running", policy=policy,
                            bandwidth_mbps=plan.bandwidth_mbps, encrypted=plan.encrypted,
                            progress={}, error="",
                            duration_s=0.0)
            session.add(row)
            vm.status = VmStatus.MIGRATING_FROM
            limit = f", {plan.bandwidth_mbps} Mbps" if plan.bandwidth_mbps else ""
            tls = ", encrypted" if plan.encrypted else ""
            audit(session, "vm", name, f"migration from {source.name} to {dest_name} "
                  f"started (policy {policy}{limit}{tls})")
            session.flush()
            plan.id = row.id
            with self._lock:  # followed from now on: active() must not take it for an orphan
                self._followed.add(plan.id)
            return plan

    def _start(self, plan: Plan) -> None:
        prepared = self._client(plan.destination).prepare_incoming(plan.xml)
        try:
            self._client(plan.source).migrate_vm(
                plan.vm_id, destination_uri(plan.destination.address, plan.encrypted),
                prepared.get("paths", {}), plan.policy, mibps(plan.bandwidth_mbps),
                tls=plan.encrypted)
        except KestrelError as err:
            if not outcome_unknown(err):
                raise
            # The source may have started it: what it reports decides, as for any migration.
            log.warning("migration of VM %s: no answer to the migrate call (%s); following "
                        "what the source reports", plan.vm, err.message)

    # -- following -------------------------------------------------------------------------

    def _follow_quietly(self, plan: Plan, timeout: float) -> None:
        try:
            self._follow(plan, timeout, None)
        except KestrelError as err:
            log.warning("%s", err.message)

    def _follow(self, plan: Plan, timeout: float,
                progress: Callable[[dict], None] | None) -> Outcome:
        source = self._client(plan.source, QUICK_TIMEOUT)
        destination = self._client(plan.destination, QUICK_TIMEOUT)
        deadline = time.monotonic() + timeout
        written = checked = 0.0
        report: dict | None = None
        why = ""
        cancelled = False
        silent_since = None
        job = job_context.current()
        while True:
            try:
                report = source.migration(plan.vm_id)
                silent_since = None
            except NotFound:
                report, why = None, "the source agent lost track of it (restarted)"
                break
            except AgentUnreachable as err:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > SETTLE_TIMEOUT:
                    report, why = None, f"the source agent stopped answering: {err.message}"
                    break
                report = None
            if report is not None and report.get("status") != "running":
                break
            now = time.monotonic()
            if report is not None:
                if progress is not None and report.get("progress"):
                    progress({**report["progress"], "status": "running"})
                job.progress(percent_done(report.get("progress") or {}),
                             f"migrating to {plan.destination.name}")
                if now - written >= PROGRESS_WRITE_INTERVAL:
                    self._record_progress(plan.id, report.get("progress", {}))
                    written = now
            if not cancelled and job.cancel_requested():
                plan.cancelled_by_user = True
                cancelled = self._cancel_for_user(plan)
            if not cancelled and now - checked >= DESTINATION_CHECK_INTERVAL:
                checked = now
                try:
                    destination.vm_status(plan.vm_id)
                except AgentUnreachable as err:
                    why = f"the destination agent stopped answering ({err.message})"
                except VmNotFound:
                    why = "the destination agent no longer knows the incoming VM"
                if why and self._cancel_requested(source, plan.vm_id):
                    why = ""  # a cancel drops the incoming copy: that is no failure
            if not cancelled and not why and now > deadline:
                why = f"it did not finish within {timeout:g} s"
            if why and not cancelled:
                cancelled = self._abort(plan, why)
            time.sleep(POLL)
        if report is not None and report.get("status") == "failed" and report.get("error"):
            why = report["error"]  # it failed on its own: libvirt's (or the policy's) reason
            why += _tls_hint(plan.encrypted, why)
        elif report is not None and why and report.get("status") == "cancelled":
            report = {**report, "status": "failed"}  # we aborted it, for this reason
        return self._settle(plan, report, why or (report or {}).get("error") or "")

    @staticmethod
    def _cancel_requested(source, vm_id: str) -> bool:
        try:
            report = source.migration(vm_id)
        except KestrelError:
            return False
        return bool(report.get("cancel_requested")) or report.get("status") == "cancelled"

    def _cancel_for_user(self, plan: Plan) -> bool:
        """The cancel `kestrel vm cancel-migration` asks for; tried again while it fails."""
        try:
            self.cancel(plan.vm)
        except KestrelError as err:
            log.warning("migration of VM %s: cancel failed: %s", plan.vm, err.message)
            return False
        return True

    def _abort(self, plan: Plan, why: str) -> bool:
        log.warning("migration of VM %s: aborting, %s", plan.vm, why)
        try:
            self._client(plan.source, QUICK_TIMEOUT).cancel_migration(plan.vm_id)
        except KestrelError as err:
            log.warning("migration of VM %s: abort failed: %s", plan.vm, err.message)
        return True

    # -- settling ----------------------------------------------------------------------------

    def _settle(self, plan: Plan, report: dict | None, why: str) -> Outcome:
        """Record the truth as both agents tell it; raise MigrationFailed unless it moved."""
        status = (report or {}).get("status")
        if status == "succeeded" and self._runs_on(plan.destination, plan.vm_id, wait=True):
            return Outcome(True, self._record_success(plan, report))
        on_source = self._runs_on(plan.source, plan.vm_id, wait=True)
        on_destination = self._runs_on(plan.destination, plan.vm_id, wait=False)
        if not on_source and on_destination:
            # It moved after all (e.g. the source agent restarted after the switchover).
            return Outcome(True, self._record_success(plan, report))
        if not on_source and on_destination is None:
            raise self._undecided(plan, why)
        note = self._drop_incoming(plan)
        if on_source:
            final = "cancelled" if status == "cancelled" else "failed"
            message = why or "unknown reason"
            self._record_end(plan, report, final, message + note, VmStatus.UP)
            if final == "cancelled":
                entity = plan.entity("cancelled", error=message)
                return Outcome(False, {**entity, **self._row_entity(plan.id)})
            raise MigrationFailed(f"migration of VM '{plan.vm}' from {plan.source.name} to "
                                  f"{plan.destination.name} failed: {message}; it runs on "
                                  f"{plan.source.name}{note}", vm=plan.vm,
                                  source=plan.source.name, destination=plan.destination.name)
        message = (f"migration of VM '{plan.vm}' failed ({why or 'unknown reason'}) and "
                   f"neither {plan.source.name} nor {plan.destination.name} reports it running")
        self._record_end(plan, report, "failed", message, VmStatus.UNKNOWN)
        raise MigrationFailed(message, vm=plan.vm, source=plan.source.name,
                              destination=plan.destination.name)

    def _undecided(self, plan: Plan, why: str) -> AgentUnreachable:
        """Neither agent confirms where the VM runs: record nothing on a guess. The row stays
        running and the VM MigratingFrom; the engine loop (active()) settles it later."""
        with self._lock:
            first = plan.id in self._followed  # the loop's later tries say it once only
            self._followed.discard(plan.id)
        message = (f"migration of VM '{plan.vm}' from {plan.source.name} to "
                   f"{plan.destination.name}: outcome unknown ({why or 'no answer'}); "
                   f"{plan.source.name} does not report it running and "
                   f"{plan.destination.name} does not answer; it is settled once they do")
        if first:
            with self.engine.store.transaction() as session:
                audit(session, "vm", plan.vm, message, "warning")
        return AgentUnreachable(message, vm=plan.vm, source=plan.source.name,
                                destination=plan.destination.name)

    def _runs_on(self, host: HostRef, vm_id: str, wait: bool) -> bool | None:
        """Whether the host's agent reports the VM's domain running (or paused) there;
        None when it did not answer.

        ``wait``: give the agent SETTLE_TIMEOUT to settle. It may be restarting; or
        libvirt already resumed the incoming guest while the agent still says
        MigratingTo: it learns of the resume from a libvirt event, which can arrive
        after the source has reported success. A resumed guest is not "nowhere".
        """
        client = self._client(host, QUICK_TIMEOUT)
        deadline = time.monotonic() + (SETTLE_TIMEOUT if wait else 0)
        while True:
            try:
                report = client.vm_status(vm_id)
                if report.get("state") not in RUNNING_STATES:
                    return False
                if report.get("status") != VmStatus.MIGRATING_TO:
                    return True
                if report.get("state") not in RESUMED_STATES or time.monotonic() >= deadline:
                    return False  # an incoming copy that never resumed does not run there
            except VmNotFound:
                return False
            except AgentUnreachable:
                if time.monotonic() >= deadline:
                    return None
            time.sleep(POLL)

    def _drop_incoming(self, plan: Plan) -> str:
        """Destroy the destination's incoming copy that never resumed; say if we could not."""
        try:
            self._client(plan.destination, QUICK_TIMEOUT).cancel_migration(plan.vm_id)
        except NotFound:
            pass  # libvirt already dropped it (the usual case)
        except Conflict as err:
            return f" (destination refused to drop its copy: {err.message})"
        except AgentUnreachable:
            return (f" (destination {plan.destination.name} not verified: its agent does not "
                    "answer; libvirt dropped the incoming domain with the aborted job)")
        return ""

    def _record_progress(self, migration_id: int, progress: dict) -> None:
        with self.engine.store.transaction() as session:
            row = session.get(Migration, migration_id)
            if row is not None:
                row.progress = dict(progress)

    def _record_success(self, plan: Plan, report: dict | None) -> dict:
        report = report or {}
        destination = self._client(plan.destination)
        entity = self._switch(plan, report, destination.vm_xml(plan.vm_id))
        with self._lock:
            self._followed.discard(plan.id)
        try:  # the source's record of the VM (Down, "migrated"), if it kept one
            self._client(plan.source, QUICK_TIMEOUT).remove_vm(plan.vm_id)
        except (VmNotFound, Conflict, AgentUnreachable):
            pass
        return entity

    @retry_on_conflict
    def _switch(self, plan: Plan, report: dict, live: str) -> dict:
        """The VM runs on its destination now: record it, with the devices it has there."""
        with self.engine.store.transaction() as session:
            vm = get_vm(session, plan.vm)
            row = session.get(Migration, plan.id)
            host = next(h for h in vm.cluster.hosts if h.name == plan.destination.name)
            vm.run_on_host, vm.status = host, VmStatus.UP
            devices.record_live(vm, live)
            row.status, row.downtime_ms = "succeeded", report.get("downtime_ms")
            row.progress = _final_progress(report, row)
            row.error = report.get("error") or ""
            row.finished_at, row.duration_s = utcnow(), round(time.monotonic() - plan.started, 3)
            downtime = f", downtime {row.downtime_ms} ms" if row.downtime_ms is not None else ""
            audit(session, "vm", plan.vm, f"migrated from {plan.source.name} to "
                  f"{plan.destination.name} in {row.duration_s:.1f} s{downtime}")
            return migration_dict(row)

    @retry_on_conflict
    def _record_end(self, plan: Plan, report: dict | None, status: str, message: str,
                    vm_status: str) -> None:
        with self.engine.store.transaction() as session:
            vm = get_vm(session, plan.vm)
            row = session.get(Migration, plan.id)
            vm.status = vm_status
            if row is not None:
                row.status, row.error = status, message
                row.progress = _final_progress(report or {}, row)
                row.finished_at = utcnow()
                row.duration_s = round(time.monotonic() - plan.started, 3)
            severity = "warning" if status == "cancelled" else "error"
            audit(session, "vm", plan.vm, f"migration from {plan.source.name} to "
                  f"{plan.destination.name} {status}: {message}", severity)
        with self._lock:
            self._followed.discard(plan.id)

    # -- helpers -----------------------------------------------------------------------------

    def _client(self, host: HostRef, timeout: float | None = None):
        client = self.engine.agent(host.address, host.port)
        if timeout is not None and hasattr(client, "timeout"):
            client.timeout = timeout
        return client

    @staticmethod
    def _running_row(session, vm_id: str) -> Migration | None:
        return session.scalars(select(Migration).where(
            Migration.vm_id == vm_id, Migration.status == "running")).first()

    def _row_entity(self, migration_id: int) -> dict:
        with self.engine.store.transaction(commit=False) as session:
            row = session.get(Migration, migration_id)
            return migration_dict(row) if row is not None else {}

    def _still_running(self, migration_id: int) -> bool:
        return self._row_entity(migration_id).get("status") == "running"

    def _plan_of(self, session, row: Migration) -> Plan | None:
        vm = session.get(Vm, row.vm_id)
        hosts = {h.name: h for h in vm.cluster.hosts} if vm is not None else {}
        if vm is None or row.source not in hosts or row.destination not in hosts:
            return None
        return Plan(row.id, vm.name, vm.id, HostRef.of(hosts[row.source]),
                    HostRef.of(hosts[row.destination]), row.policy, row.bandwidth_mbps, "",
                    time.monotonic() - (row.duration_s or 0),
                    bool(vm.cluster.migration_encrypted))
