"""Host maintenance: move every VM away, then hold the host out of scheduling.

Entering maintenance decides up front, under the cluster lock: the host goes
PreparingForMaintenance (the scheduler's status filter then places nothing
there) only if every VM on it has somewhere to go, all of them together (each
planned move claims its destination before the next VM is placed). A VM that
cannot move (pinned to this host, no room elsewhere, not Up) refuses
the whole request at once with the scheduler's reasons, and nothing changes:
waiting on a migration that cannot happen would only hang the playbook.

Then the VMs migrate one at a time through the migration service, which
chooses each destination again with the same filters and waits for it. When
none is left the host is in Maintenance. A failed migration puts the host back
to Up: half-evacuated and unschedulable, with nobody waiting on it, is the
worst place to leave it. A maintenance its user cancels (an engine API job) does
the same, between migrations or by cancelling the one in flight (the VM stays on
this host); the VMs already moved stay where they went. Running `maintenance` again resumes from wherever it
stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from sqlalchemy import select

from engine_lib.model import Host, Vm, utcnow
from engine_lib.protocol.errors import (
    Cancelled,
    Conflict,
    InvalidSpec,
    KestrelError,
    NoValidHost,
)
from engine_lib.protocol.statuses import HostStatus, PowerSavingState, VmStatus
from engine_lib.scheduling import HostTable, place
from engine_lib.services import cluster_facts, job_context
from engine_lib.services.common import audit, get_host, retry_on_conflict
from engine_lib.services.host_records import host_dict, record_capabilities
from engine_lib.services.results import Outcome
from engine_lib.store import lock_cluster

# Live migration moves a running guest; anything paused, migrating or in transition must
# settle first (the migration service refuses it too).
MOVABLE = frozenset({VmStatus.UP})


@dataclass
class Evacuation:
    host: str
    moves: list[dict] = field(default_factory=list)
    # VM name -> why it cannot leave.
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def vms(self) -> list[str]:
        return [m["vm"] for m in self.moves] + list(self.refused)


def plan(facts: cluster_facts.ClusterFacts, host: str) -> Evacuation:
    """Where each VM of ``host`` would go, or why it cannot: pure, over the cluster's facts."""
    table = HostTable([replace(h, status=HostStatus.PREPARING_FOR_MAINTENANCE)
                       if h.name == host else h for h in facts.hosts])
    evacuation = Evacuation(host)
    for vm in facts.on(host):
        if vm.status not in MOVABLE:
            evacuation.refused[vm.name] = f"VM '{vm.name}' is {vm.status}, not Up: only a " \
                                          "running VM migrates live"
            continue
        decision = place(vm.request, table, facts.policy, facts.context)
        if decision.host is None:
            evacuation.refused[vm.name] = NoValidHost(vm.name, decision.explain()).message
            continue
        table.claim(decision.host_index, vm.request)
        facts.context.record(vm.name, decision.host, vm.request.affinity_groups)
        evacuation.moves.append({"vm": vm.name, "source": host, "destination": decision.host})
    return evacuation


def _state(status: str, vms: list[str]) -> dict:
    """What --diff compares: the host's status and the VMs it runs."""
    return {"status": status, "vms": sorted(vms)}


def _entity(host: Host, migrations: list[dict], status: str | None = None) -> dict:
    entity = host_dict(host)
    if status:
        entity["status"] = status
    entity["migrations"] = migrations
    return entity


@retry_on_conflict
def _prepare(engine, name: str, check_mode: bool) -> tuple[Outcome | None, Evacuation, dict]:
    """Plan under the cluster lock; mark the host PreparingForMaintenance only if all can move.

    Returns (a final Outcome when there is nothing to migrate, the plan, the diff's before).
    """
    with engine.store.transaction(commit=not check_mode) as session:
        host = get_host(session, name)
        if host.status == HostStatus.MAINTENANCE:
            same = _state(host.status, [])
            return Outcome(False, _entity(host, []), {"before": same, "after": same}), \
                Evacuation(name), same
        facts = cluster_facts.load(session, lock_cluster(session, host.cluster_id))
        evacuation = plan(facts, name)
        before = _state(host.status, evacuation.vms)
        if evacuation.refused:
            raise Conflict(f"host '{name}' cannot go to maintenance, nothing was changed: "
                           + "; ".join(evacuation.refused.values()),
                           host=name, refused=evacuation.refused)
        if evacuation.moves and host.status not in (HostStatus.UP,
                                                    HostStatus.PREPARING_FOR_MAINTENANCE):
            raise Conflict(f"host '{name}' is {host.status}: its VMs "
                           f"({', '.join(evacuation.vms)}) cannot be migrated away; nothing "
                           "was changed", host=name, status=host.status)
        previous = host.status
        after = _state(HostStatus.MAINTENANCE, [])
        if not evacuation.moves:
            host.status = HostStatus.MAINTENANCE
            audit(session, "host", name, f"host is in Maintenance (was {previous}); it ran no VMs")
            return Outcome(True, _entity(host, []), {"before": before, "after": after}), \
                evacuation, before
        host.status = HostStatus.PREPARING_FOR_MAINTENANCE
        audit(session, "host", name, "host is PreparingForMaintenance: migrating "
              + ", ".join(f"{m['vm']} (to {m['destination']})" for m in evacuation.moves))
        if check_mode:
            planned = [{**m, "status": "planned"} for m in evacuation.moves]
            return Outcome(True, _entity(host, planned, HostStatus.MAINTENANCE),
                           {"before": before, "after": after}), evacuation, before
        return None, evacuation, before


@retry_on_conflict
def _audit_refusal(engine, name: str, message: str) -> None:
    with engine.store.transaction() as session:
        audit(session, "host", name, f"maintenance refused: {message}", "warning")


@retry_on_conflict
def _back_up(engine, name: str, why: str, ended: str = "failed") -> None:
    with engine.store.transaction() as session:
        host = get_host(session, name)
        if host.status == HostStatus.PREPARING_FOR_MAINTENANCE:
            host.status = HostStatus.UP
        audit(session, "host", name, f"maintenance {ended}, host is {host.status} again: {why}",
              "error" if ended == "failed" else "warning")


@retry_on_conflict
def _finish(engine, name: str, migrations: list[dict]) -> dict:
    with engine.store.transaction() as session:
        host = get_host(session, name)
        left = list(session.scalars(select(Vm.name).where(
            Vm.run_on_host_id == host.id, Vm.status.in_(VmStatus.ACTIVE))))
        if left:
            raise Conflict(f"host '{name}' still runs {', '.join(left)} after the migrations",
                           host=name, vms=left)
        host.status = HostStatus.MAINTENANCE
        audit(session, "host", name, "host is in Maintenance: "
              + ", ".join(f"{m['vm']} migrated to {m['destination']}" for m in migrations))
        return _entity(host, migrations)


def enter(engine, name: str, *, check_mode: bool = False, timeout: float = 600) -> Outcome:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidSpec("timeout", f"must be a positive number of seconds (got {timeout!r})")
    try:
        outcome, evacuation, before = _prepare(engine, name, check_mode)
    except Conflict as err:
        if not check_mode and "refused" in err.details:
            _audit_refusal(engine, name, err.message)
        raise
    if outcome is not None:
        return outcome

    deadline = time.monotonic() + timeout
    migrations: list[dict] = []
    job, total = job_context.current(), len(evacuation.moves)
    for index, move in enumerate(evacuation.moves):
        vm = move["vm"]
        step = f"VM '{vm}' ({index + 1} of {total})"
        job.progress(100 * index // total, f"migrating {step}")
        try:
            if job.cancel_requested():  # between migrations: nothing is half-done
                raise Cancelled(f"before migrating VM '{vm}'")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Conflict(f"the maintenance timeout of {timeout:g}s ran out before VM "
                               f"'{vm}' could migrate")
            # host=None: the scheduler picks again, with this host already excluded.
            with job_context.part(100 * index // total, 100 * (index + 1) // total, step):
                result = engine.migrations.migrate(vm, wait=True, timeout=remaining).entity
            if result.get("status") != "succeeded":
                raise Conflict(f"the migration of VM '{vm}' ended {result.get('status')}")
        except Cancelled:
            # As when a migration fails: the host goes back to Up, the VMs already moved
            # stay where they are.
            moved = _moved(migrations)
            why = f"{len(migrations)} of {total} VMs migrated ({moved}); VM '{vm}' runs on {name}"
            _back_up(engine, name, why, "cancelled by its user")
            raise Cancelled(f"cancelled by its user: maintenance of host '{name}': {why}; "
                            f"host '{name}' is Up again", host=name, vm=vm,
                            migrated=migrations) from None
        except KestrelError as err:
            why = f"migrating VM '{vm}' failed: {err.message}"
            _back_up(engine, name, why)
            raise Conflict(f"host '{name}' did not go to maintenance and is Up again: {why} "
                           f"(already migrated: {_moved(migrations)}); run again once the "
                           "cause is fixed",
                           host=name, vm=vm, cause=err.to_dict(), migrated=migrations) from err
        migrations.append({"vm": vm, "source": name, "destination": result.get("destination"),
                           "status": result.get("status"),
                           "downtime_ms": result.get("downtime_ms"),
                           "duration_s": result.get("duration_s")})
    try:
        entity = _finish(engine, name, migrations)
    except Conflict as err:
        _back_up(engine, name, err.message)
        raise
    job.progress(100, "in Maintenance")
    return Outcome(True, entity, {"before": before, "after": _state(HostStatus.MAINTENANCE, [])})


def _moved(migrations: list[dict]) -> str:
    return ", ".join(f"{m['vm']} to {m['destination']}" for m in migrations) or "none"


def leave(engine, name: str, *, check_mode: bool = False) -> Outcome:
    """Back to Up, once the agent answers: a host still rebooting stays in Maintenance."""
    with engine.store.transaction(commit=False) as session:
        host = get_host(session, name)
        if host.status not in HostStatus.HELD:
            same = _state(host.status, [])
            return Outcome(False, _entity(host, []), {"before": same, "after": same})
        address, port = host.address, host.port
    capabilities = engine.agent(address, port).host_info()
    return _activate(engine, name, capabilities, check_mode)


@retry_on_conflict
def _activate(engine, name: str, capabilities: dict, check_mode: bool) -> Outcome:
    with engine.store.transaction(commit=not check_mode) as session:
        host = get_host(session, name)
        if host.power_saving == PowerSavingState.STOPPING:
            raise Conflict(f"host '{name}' is being powered off by power saving; activate it "
                           "once that ended", host=name, power_saving=host.power_saving)
        previous = host.status
        record_capabilities(host, capabilities)
        host.status = HostStatus.UP
        if host.power_saving:  # up by an operator or for capacity: power saving lets go
            host.power_saving, host.power_saving_at = PowerSavingState.NONE, utcnow()
        audit(session, "host", name, f"host activated: Up (was {previous})")
        return Outcome(previous != HostStatus.UP, _entity(host, []),
                       {"before": _state(previous, []), "after": _state(HostStatus.UP, [])})
