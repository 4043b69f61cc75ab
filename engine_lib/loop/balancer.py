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

CPU thresholds hold "over a duration". The engine stores only each host's
current CPU load, so the balancer keeps its own history, one sample per host per
minute, in memory, and acts on a CPU policy only once it has seen the policy's
whole duration (after a restart it waits that long again, rather than act on one
sample).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from engine_lib.model import Cluster
from engine_lib.protocol.errors import KestrelError
from engine_lib.protocol.statuses import HostStatus
from engine_lib.scheduling import HostTable
from engine_lib.scheduling.balancing import Proposal, Running, balance
from engine_lib.services import cluster_facts
from engine_lib.services.common import audit, retry_on_conflict

log = logging.getLogger("kestrel.engine.balancer")

# Balancers that compare CPU load over the policy's duration (the VM-count one does not).
_CPU_BALANCERS = frozenset({"evenly_distributed", "power_saving"})
_SAMPLE_EVERY_S = 60.0
_MAX_SAMPLES = 24 * 60  # the longest duration a policy accepts, in minutes


@dataclass(frozen=True)
class Settings:
    interval_s: float = 60.0
    # Proposals carried out per cluster per interval.
    max_migrations: int = 1
    migration_timeout_s: float = 600.0


class Balancer:
    def __init__(self, engine, settings: Settings = Settings(),
                 clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self._cpu: dict[str, deque] = {}
        self._sampled_at: dict[str, float] = {}

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
        self._sample(facts)
        policy = facts.policy
        if not policy.balancer:
            return [], f"policy {policy.name} does not balance"
        preparing = [h.name for h in facts.hosts
                     if h.status == HostStatus.PREPARING_FOR_MAINTENANCE]
        if preparing:
            return [], f"host {', '.join(preparing)} is preparing for maintenance"
        names = {vm.name for vm in facts.running}
        moving = [m.get("vm") for m in self.engine.migrations.active() if m.get("vm") in names]
        if moving:
            return [], f"VM {', '.join(moving)} is migrating"
        history = None
        if policy.balancer in _CPU_BALANCERS:
            minutes = policy.param("cpu_overcommit_duration_minutes")
            history = self._history(facts, minutes)
            if history is None:
                return [], f"waiting for {minutes} min of CPU samples"
        table = HostTable(facts.hosts)
        return balance(policy, table, _running(facts, table), cpu_history=history,
                       context=facts.context,
                       requests={vm.name: vm.request for vm in facts.running},
                       limit=self.settings.max_migrations), ""

    # -- CPU history ---------------------------------------------------------------------

    def _sample(self, facts: cluster_facts.ClusterFacts) -> None:
        now = self.clock()
        for host in facts.hosts:
            if now - self._sampled_at.get(host.name, float("-inf")) >= _SAMPLE_EVERY_S:
                self._cpu.setdefault(host.name, deque(maxlen=_MAX_SAMPLES)).append(
                    host.used_cpu_percent)
                self._sampled_at[host.name] = now

    def _history(self, facts: cluster_facts.ClusterFacts, minutes: int) -> np.ndarray | None:
        """(hosts x minutes) CPU samples, newest last; None until every host has that many."""
        samples = [self._cpu.get(h.name, ()) for h in facts.hosts]
        if not samples or min(len(s) for s in samples) < minutes:
            return None
        return np.array([list(s)[-minutes:] for s in samples], dtype=float)

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


def _running(facts: cluster_facts.ClusterFacts, table: HostTable) -> Running:
    """The running VMs as columns. A VM's CPU load is its share (by vCPUs) of what its host
    measures: the engine has no per-VM CPU figure of its own."""
    vms = [vm for vm in facts.running if vm.host in table.index]
    host = np.array([table.index[vm.host] for vm in vms], dtype=np.int64)
    vcpus = np.array([vm.request.vcpus for vm in vms], dtype=np.int64)
    per_host_vcpus = np.bincount(host, weights=vcpus, minlength=table.size) if vms else \
        np.zeros(table.size)
    cpu = table.used_cpu_percent[host] * vcpus / np.maximum(per_host_vcpus[host], 1) if vms \
        else np.zeros(0)
    return Running([vm.name for vm in vms], host,
                   np.array([vm.request.memory_mib for vm in vms], dtype=np.int64), vcpus,
                   np.asarray(cpu, dtype=float))
