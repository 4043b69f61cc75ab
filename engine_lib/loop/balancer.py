"""Balancing in the engine loop: apply each cluster's balancing policy by migrating VMs.

Every interval, each cluster whose policy has a balancer (scheduling/balancing.py)
gets its proposals computed from the database, and at most ``max_migrations`` of
them are carried out through the migration service, one after the other. The
limit is the rate limit: a balancer that acts on every proposal at once turns one
hot host into a migration storm, and each move changes the facts the next
proposal was computed from. Every move is in the audit log with its reason.

A cluster is left alone for a round while a migration runs in it or one of its
hosts is PreparingForMaintenance: its facts are in motion, and maintenance owns
those moves.

CPU thresholds hold "over a duration": the balancer reads each host's CPU minutes
from the statistics history (services/stats_history.py), so an engine restart
loses nothing, and acts on a CPU policy only once every Up host of the cluster
has the policy's whole duration of samples (never on one sample). A VM's CPU
load is its own measured figure (vm_statistics), as a share of its host's CPUs.

A VM that finished a migration (the balancer's, maintenance's, a user's) within
the policy's ``vm_cooldown_minutes`` is not moved: the figures that led to one
move need time to show its effect before they justify another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib.model import Cluster, Host, Migration, Vm, VmStatistics, utcnow
from engine_lib.protocol.errors import KestrelError
from engine_lib.protocol.statuses import HostStatus
from engine_lib.scheduling import HostTable
from engine_lib.scheduling.balancing import Proposal, Running, balance
from engine_lib.services import cluster_facts, stats_history
from engine_lib.services.common import audit, retry_on_conflict

log = logging.getLogger("kestrel.engine.balancer")

# Balancers that compare CPU load over the policy's duration (the VM-count one does not).
_CPU_BALANCERS = frozenset({"evenly_distributed", "power_saving"})


@dataclass(frozen=True)
class Settings:
    interval_s: float = 60.0
    # Proposals carried out per cluster per interval.
    max_migrations: int = 1
    migration_timeout_s: float = 600.0


@dataclass(frozen=True)
class _Measured:
    """What the database says about a cluster's load, beside its scheduling facts."""

    # Host name -> its CPU percent of each of the policy's last minutes (oldest first);
    # None while an Up host lacks some.
    history: np.ndarray | None
    # VM name -> CPU percent as top shows it (100 = one host CPU).
    vm_cpu: dict[str, float]
    # VMs within their cool-down after a migration.
    cooling: frozenset[str]


class Balancer:
    def __init__(self, engine, settings: Settings = Settings(),
                 now: Callable[[], datetime] = utcnow):
        self.engine = engine
        self.settings = settings
        self.now = now

    # -- one round -----------------------------------------------------------------------

    def cycle(self) -> list[dict]:
        """Balance every cluster once; the migrations tried, with how each ended."""
        done = []
        for cluster in self._clusters():
            proposals, why_not = self._proposals(cluster)
            if why_not:
                log.debug("cluster %s not balanced this round: %s", cluster, why_not)
            for proposal in proposals[:self.settings.max_migrations]:
                done.append(self._migrate(cluster, proposal))
        return done

    def _clusters(self) -> list[str]:
        with self.engine.store.transaction(commit=False) as session:
            return list(session.scalars(select(Cluster.name).order_by(Cluster.name)))

    def _proposals(self, name: str) -> tuple[list[Proposal], str]:
        with self.engine.store.transaction(commit=False) as session:
            cluster = session.execute(select(Cluster).where(Cluster.name == name)).scalar_one()
            facts = cluster_facts.load(session, cluster)
            if not facts.policy.balancer:
                return [], f"policy {facts.policy.name} does not balance"
            measured = _measure(session, cluster, facts, self.now())
        policy = facts.policy
        preparing = [h.name for h in facts.hosts
                     if h.status == HostStatus.PREPARING_FOR_MAINTENANCE]
        if preparing:
            return [], f"host {', '.join(preparing)} is preparing for maintenance"
        names = {vm.name for vm in facts.running}
        moving = [m.get("vm") for m in self.engine.migrations.active() if m.get("vm") in names]
        if moving:
            return [], f"VM {', '.join(moving)} is migrating"
        if policy.balancer in _CPU_BALANCERS and measured.history is None:
            return [], (f"waiting for {policy.param('cpu_overcommit_duration_minutes')} min "
                        "of CPU samples")
        table = HostTable(facts.hosts)
        return balance(policy, table, _running(facts, table, measured),
                       cpu_history=measured.history, context=facts.context,
                       requests={vm.name: vm.request for vm in facts.running},
                       limit=self.settings.max_migrations), ""

    # -- carrying one proposal out -------------------------------------------------------

    def _migrate(self, cluster: str, proposal: Proposal) -> dict:
        record = {"cluster": cluster, "vm": proposal.vm, "source": proposal.source,
                  "destination": proposal.destination, "reason": proposal.reason}
        self._audit(proposal.vm, f"balancing: migrating vm {proposal.vm} from {proposal.source} "
                                 f"to {proposal.destination} ({proposal.reason})")
        try:
            result = self.engine.migrations.migrate(
                proposal.vm, host=proposal.destination, wait=True,
                timeout=self.settings.migration_timeout_s).entity
        except KestrelError as err:
            self._audit(proposal.vm, f"balancing: migrating vm {proposal.vm} from "
                                     f"{proposal.source} to {proposal.destination} failed: "
                                     f"{err.message}", "warning")
            log.warning("balancing %s failed: %s", proposal.vm, err.message)
            return {**record, "status": "failed", "error": err.message}
        log.info("balancing: vm %s migrated from %s to %s", proposal.vm, proposal.source,
                 proposal.destination)
        return {**record, "status": result.get("status")}

    @retry_on_conflict
    def _audit(self, vm: str, message: str, severity: str = "info") -> None:
        with self.engine.store.transaction() as session:
            audit(session, "vm", vm, message, severity)

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """A round every interval until ``stop`` is set."""
        stop = stop or threading.Event()
        while not stop.wait(self.settings.interval_s):
            try:
                self.cycle()
            except Exception:
                log.exception("balancing round failed")


def _measure(session: Session, cluster: Cluster, facts: cluster_facts.ClusterFacts,
             now: datetime) -> _Measured:
    policy = facts.policy
    if policy.balancer not in _CPU_BALANCERS:
        return _Measured(None, {}, frozenset())
    vm_cpu = {name: float(cpu) for name, cpu in session.execute(
        select(Vm.name, VmStatistics.cpu_percent).join(VmStatistics, VmStatistics.vm_id == Vm.id)
        .where(Vm.cluster_id == cluster.id, VmStatistics.cpu_percent.is_not(None)))}
    since = now - timedelta(minutes=policy.param("vm_cooldown_minutes"))
    cooling = frozenset(session.scalars(
        select(Vm.name).join(Migration, Migration.vm_id == Vm.id)
        .where(Vm.cluster_id == cluster.id, Migration.finished_at >= since)))
    return _Measured(_history(session, cluster, facts, now), vm_cpu, cooling)


def _history(session: Session, cluster: Cluster, facts: cluster_facts.ClusterFacts,
             now: datetime) -> np.ndarray | None:
    """(hosts x minutes) CPU samples, newest last, in facts.hosts' order. A host that is not
    Up is never a source or a destination: its current figure stands in for its history."""
    minutes = facts.policy.param("cpu_overcommit_duration_minutes")
    ids = {name: id_ for name, id_ in session.execute(
        select(Host.name, Host.id).where(Host.cluster_id == cluster.id))}
    up = [h.name for h in facts.hosts if h.status == HostStatus.UP]
    samples = stats_history.cpu_minutes(session, [ids[n] for n in up], minutes, now)
    rows = []
    for host in facts.hosts:
        cpu = samples.get(ids[host.name], []) if host.status == HostStatus.UP else \
            [host.used_cpu_percent] * minutes
        if len(cpu) < minutes:
            return None
        rows.append(cpu[-minutes:])
    return np.array(rows, dtype=float).reshape(len(facts.hosts), minutes)


def _running(facts: cluster_facts.ClusterFacts, table: HostTable, measured: _Measured) -> Running:
    """The running VMs as columns; a VM's CPU load in percent of its host's CPUs (0 until
    its host has reported it)."""
    vms = [vm for vm in facts.running if vm.host in table.index]
    host = np.array([table.index[vm.host] for vm in vms], dtype=np.int64)
    cpu = np.array([measured.vm_cpu.get(vm.name, 0.0) for vm in vms], dtype=float) / \
        np.maximum(table.cpus[host], 1)
    return Running([vm.name for vm in vms], host,
                   np.array([vm.request.memory_mib for vm in vms], dtype=np.int64),
                   np.array([vm.request.vcpus for vm in vms], dtype=np.int64), cpu,
                   np.array([vm.name in measured.cooling for vm in vms], dtype=bool))
