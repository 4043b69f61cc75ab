"""Balancers: propose migrations, with the reason for each. Pure: the engine loop applies them.

Each balancer reads the host table and the running VMs (as columns) and asks
``place`` for each VM it wants to move, so a proposed destination passes the
same filters a start would, and never is the VM's own host.
CPU thresholds hold "over a duration": ``cpu_history`` has one CPU sample per
minute per host (newest last); a host counts as over (under) a threshold only
if every sample of the policy's duration is. Without history the current
``used_cpu_percent`` stands for the whole duration.

A VM that migrated within the policy's cool-down (``Running.cooling``) is never
proposed, so a VM is not bounced around while the load figures catch up with a move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine_lib.scheduling.placement import Avoid, place
from engine_lib.scheduling.policies import Policy
from engine_lib.scheduling.state import Context, VmRequest
from engine_lib.scheduling.table import FloatColumn, HostTable, Indexes, IntColumn, Mask


@dataclass(frozen=True)
class Proposal:
    vm: str
    source: str
    destination: str
    reason: str


@dataclass
class Running:
    """The running VMs as columns; ``host`` is an index into the host table."""

    names: Sequence[str]
    host: IntColumn
    memory_mib: IntColumn
    vcpus: IntColumn
    # CPU load each VM puts on its host, in percent of the host.
    cpu_percent: FloatColumn
    # True for a VM within its cool-down after a migration: it stays where it is.
    cooling: Mask | None = None


def _sustained(table: HostTable, history: NDArray[np.float64] | None,
               minutes: int) -> tuple[FloatColumn, FloatColumn]:
    """(lowest, highest) CPU load of each host over the last ``minutes``."""
    if history is None or history.shape[1] == 0:
        return table.used_cpu_percent, table.used_cpu_percent
    window = history[:, -minutes:]
    return window.min(axis=1), window.max(axis=1)


class _Pass:
    """One balancing pass: VMs grouped by host once, claims undone at the end."""

    def __init__(self, policy: Policy, table: HostTable, running: Running, context: Context | None,
                 requests: dict[str, VmRequest] | None):
        self.policy, self.table, self.running = policy, table, running
        self.context = context or Context()
        self.requests = requests or {}
        self.order = np.argsort(running.host, kind="stable")
        self.starts = np.searchsorted(running.host[self.order], np.arange(table.size + 1))
        self.claims: list[tuple[int, VmRequest]] = []
        self.cooling: Mask = running.cooling if running.cooling is not None else \
            np.zeros(len(running.names), dtype=bool)

    def vms_on(self, host: int) -> Indexes:
        return self.order[self.starts[host]:self.starts[host + 1]]

    def movable_on(self, host: int) -> Indexes:
        """The VMs on ``host`` that are not cooling down after a migration."""
        vms = self.vms_on(host)
        movable: Indexes = vms[~self.cooling[vms]]
        return movable

    def source(self, k: int) -> str:
        """The host VM ``k`` runs on."""
        return self.table.names[int(self.running.host[k])]

    def request(self, k: int) -> VmRequest:
        name, source = self.running.names[k], self.source(k)
        known = self.requests.get(name)
        if known is not None:
            return VmRequest(**{**known.__dict__, "current_host": source})
        return VmRequest(name, int(self.running.vcpus[k]), int(self.running.memory_mib[k]),
                         current_host=source)

    def move(self, k: int, reason: str, avoid: Avoid | None = None) -> Proposal | None:
        request = self.request(k)
        decision = place(request, self.table, self.policy, self.context, avoid)
        if decision.host is None or decision.host_index is None:  # set together
            return None
        self.table.claim(decision.host_index, request)
        self.claims.append((decision.host_index, request))
        return Proposal(request.name, self.source(k), decision.host,
                        f"{reason}; {decision.host} has the best weight "
                        f"({decision.weights[decision.host]:.3f})")

    def undo(self) -> None:
        for index, request in self.claims:
            self.table.release(index, request)


def _relieve_overutilized(p: _Pass, high: int, minutes: int, low_cpu: FloatColumn,
                          limit: int) -> list[Proposal]:
    over = np.flatnonzero(p.table.up & (low_cpu > high))
    proposals = []
    # Hottest host first; from it, the VM that takes the most load away.
    for source in over[np.argsort(-low_cpu[over], kind="stable")][:limit]:
        vms = p.movable_on(int(source))
        if not vms.size:
            continue
        k = int(vms[np.argmax(p.running.cpu_percent[vms])])
        # A destination must stay under the threshold with the VM's load on it.
        hot = (low_cpu > high) | (p.table.used_cpu_percent + p.running.cpu_percent[k] >= high)
        proposal = p.move(k, f"host {p.table.names[source]} CPU above {high}% for {minutes} min "
                             f"(lowest sample {low_cpu[source]:.0f}%)",
                          Avoid(hot, f"would reach {high}% CPU with this VM"))
        if proposal:
            proposals.append(proposal)
    return proposals


def _first_fit(p: _Pass, k: int, reason: str, tiers: Sequence[Mask],
               why: str) -> Proposal | None:
    """Move VM ``k`` within the first tier of hosts (each given by the hosts it avoids)
    that can take it."""
    tried: list[Mask] = []
    for avoid in tiers:
        if avoid.all() or any(np.array_equal(avoid, t) for t in tried):
            continue
        tried.append(avoid)
        proposal = p.move(k, reason, Avoid(avoid, why))
        if proposal:
            return proposal
    return None


def evenly_distributed(policy: Policy, table: HostTable, running: Running,
                       cpu_history: NDArray[np.float64] | None = None,
                       context: Context | None = None,
                       requests: dict[str, VmRequest] | None = None,
                       limit: int = 10) -> list[Proposal]:
    """Move the busiest VM off each host whose CPU stayed above ``high_utilization``."""
    p = _Pass(policy, table, running, context, requests)
    high, minutes = policy.param("high_utilization"), policy.param("cpu_overcommit_duration_minutes")
    try:
        return _relieve_overutilized(p, high, minutes, _sustained(table, cpu_history, minutes)[0], limit)
    finally:
        p.undo()


def power_saving(policy: Policy, table: HostTable, running: Running,
                 cpu_history: NDArray[np.float64] | None = None,
                 context: Context | None = None,
                 requests: dict[str, VmRequest] | None = None, limit: int = 10) -> list[Proposal]:
    """Relieve over-utilized hosts, then empty the under-utilized host with the fewest VMs
    so it can be powered down.

    Its VMs go only to hosts that already run VMs and have at least as many as it
    (never to an empty host: that only moves the problem, and the next round would
    move it back), and that stay under ``high_utilization`` with the VM's load: the
    ones over ``low_utilization`` first, then the fullest. Each move then leaves the VMs
    on fewer or fuller hosts (the sum of the squared VM counts grows), so consolidation
    ends, and a consolidated cluster stays still.
    """
    p = _Pass(policy, table, running, context, requests)
    low, high = policy.param("low_utilization"), policy.param("high_utilization")
    minutes = policy.param("cpu_overcommit_duration_minutes")
    lowest, highest = _sustained(table, cpu_history, minutes)
    try:
        proposals = _relieve_overutilized(p, high, minutes, lowest, limit)
        counts = np.diff(p.starts)
        # A host with a VM cooling down cannot be emptied now: leave it for a later round.
        cooling = np.bincount(running.host[p.cooling], minlength=table.size) > 0
        under = table.up & (highest < low) & (counts > 0) & ~cooling
        candidates = np.flatnonzero(under)
        if not candidates.size or len(proposals) >= limit:
            return proposals
        source = int(candidates[np.argmin(counts[candidates])])
        load = table.used_cpu_percent.copy()
        # VMs each host runs or is about to run (a start or an incoming migration).
        hosted = np.maximum(counts, table.vm_count)
        too_few = hosted < counts[source]
        too_few[source] = True
        for k in p.vms_on(source)[:limit - len(proposals)]:
            vm_load = p.running.cpu_percent[k]
            unfit = ~table.up | (hosted == 0) | too_few | (load + vm_load >= high)
            reason = (f"host {table.names[source]} CPU below {low}% for {minutes} min "
                      f"(highest sample {highest[source]:.0f}%): emptying it so it can be "
                      "powered down")
            # Busy hosts first (they need no emptying later), then the fullest idle ones, so
            # the VMs gather whatever the weights think of a host's claimed vCPUs.
            tiers = (unfit | (highest < low), unfit | (hosted < hosted[~unfit].max(initial=0)),
                     unfit)
            proposal = _first_fit(p, int(k), reason, tiers, f"empty, runs fewer VMs than "
                                  f"{table.names[source]}, would reach {high}% CPU with this "
                                  "VM, or a better host fits")
            if proposal:
                proposals.append(proposal)
                load[table.index[proposal.destination]] += vm_load
                hosted[table.index[proposal.destination]] += 1
        return proposals
    finally:
        p.undo()


def vm_evenly_distributed(policy: Policy, table: HostTable, running: Running,
                          cpu_history: NDArray[np.float64] | None = None,
                          context: Context | None = None,
                          requests: dict[str, VmRequest] | None = None,
                          limit: int = 10) -> list[Proposal]:
    """Move a VM from the host with the most VMs when it has more than ``high_vm_count`` and
    more than ``migration_threshold`` above the host with the fewest."""
    p = _Pass(policy, table, running, context, requests)
    high, threshold = policy.param("high_vm_count"), policy.param("migration_threshold")
    counts = np.diff(p.starts)
    up = np.flatnonzero(table.up)
    proposals: list[Proposal] = []
    try:
        if not up.size:
            return proposals
        fewest = int(counts[up].min())
        for source in up[np.argsort(-counts[up], kind="stable")][:limit]:
            if counts[source] <= high or counts[source] - fewest <= threshold:
                break
            vms = p.vms_on(int(source))
            k = int(vms[np.argmin(p.running.memory_mib[vms])])
            crowded = counts >= counts[source] - threshold
            proposal = p.move(k, f"host {table.names[source]} runs {counts[source]} VMs (over "
                                 f"{high}, {counts[source] - fewest} more than the emptiest host)",
                              Avoid(crowded, "within the migration threshold of the fullest host"))
            if proposal:
                proposals.append(proposal)
        return proposals
    finally:
        p.undo()


# Each takes (policy, table, running) and the keywords of evenly_distributed.
BALANCERS: dict[str, Callable[..., list[Proposal]]] = {
    "evenly_distributed": evenly_distributed, "power_saving": power_saving,
    "vm_evenly_distributed": vm_evenly_distributed}


def balance(policy: Policy, table: HostTable, running: Running, **kw: Any) -> list[Proposal]:
    """The policy's balancer; a policy without one proposes nothing."""
    balancer = BALANCERS.get(policy.balancer or "")
    return balancer(policy, table, running, **kw) if balancer else []
