"""Weights: rank the hosts that passed every filter.

As in nova, a weight unit returns a raw metric where higher is better; the
placement normalizes it to [0, 1] over the candidate hosts (a unit that cannot
tell them apart adds 0) and multiplies it by the policy's factor for that unit.
``raw`` works on the whole host table; ``raw_one`` is the same metric for one
host, used by the per-host reference loop.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from engine_lib.scheduling import ha_reservation
from engine_lib.scheduling.state import Context, HostState, VmRequest
from engine_lib.scheduling.table import FloatColumn, HostTable

# A soft VM affinity rule: (+1 towards, -1 away), host -> other members running there.
VmAffinityRule = tuple[float, dict[str, int]]
# A soft host affinity rule: (+1 towards, -1 away), the hosts the group names.
HostAffinityRule = tuple[float, tuple[str, ...]]


class Weight(abc.ABC):
    """A raw metric per host (higher is better), normalized and scaled by the policy."""

    name = ""
    description = ""

    def detail(self, vm: VmRequest, ctx: Context, params: dict[str, int]) -> Any:
        return params

    @abc.abstractmethod
    def raw(self, table: HostTable, vm: VmRequest, detail: Any) -> FloatColumn:
        """The metric for every host of the table."""

    @abc.abstractmethod
    def raw_one(self, host: HostState, vm: VmRequest, detail: Any) -> float:
        """The metric for one host (the reference loop and explanations)."""


class CpuEven(Weight):
    name = "cpu_even"
    description = "prefer the host whose CPU load stays lowest with the VM on it"

    def raw(self, table: HostTable, vm: VmRequest, detail: Any) -> FloatColumn:
        return -table.cpu_load_with(vm.vcpus)

    def raw_one(self, host: HostState, vm: VmRequest, detail: Any) -> float:
        return -host.cpu_load_with(vm.vcpus)


class MemoryEven(Weight):
    name = "memory_even"
    description = "prefer the host with the most schedulable memory left after placement"

    def raw(self, table: HostTable, vm: VmRequest, detail: Any) -> FloatColumn:
        return (table.schedulable_mib() - vm.memory_mib).astype(np.float64)

    def raw_one(self, host: HostState, vm: VmRequest, detail: Any) -> float:
        return float(host.schedulable_mib - vm.memory_mib)


class PowerCpu(Weight):
    name = "power_cpu"
    description = ("prefer the busiest host that stays under the high CPU threshold, so idle "
                   "hosts stay empty and can be powered down")

    def raw(self, table: HostTable, vm: VmRequest, detail: Any) -> FloatColumn:
        load = table.cpu_load_with(vm.vcpus)
        return np.where(load <= detail["high_utilization"], load, -load)

    def raw_one(self, host: HostState, vm: VmRequest, detail: Any) -> float:
        load = host.cpu_load_with(vm.vcpus)
        return load if load <= detail["high_utilization"] else -load


class PowerMemory(Weight):
    name = "power_memory"
    description = "prefer the host with the least schedulable memory left (pack VMs)"

    def raw(self, table: HostTable, vm: VmRequest, detail: Any) -> FloatColumn:
        return -(table.schedulable_mib() - vm.memory_mib).astype(np.float64)

    def raw_one(self, host: HostState, vm: VmRequest, detail: Any) -> float:
        return -float(host.schedulable_mib - vm.memory_mib)


class VmCountEven(Weight):
    name = "vm_count_even"
    description = "prefer the host running the fewest VMs"

    def raw(self, table: HostTable, vm: VmRequest, detail: Any) -> FloatColumn:
        return -table.vm_count.astype(np.float64)

    def raw_one(self, host: HostState, vm: VmRequest, detail: Any) -> float:
        return -float(host.vm_count)


class VmAffinitySoft(Weight):
    name = "vm_affinity"
    description = "non-enforcing VM-to-VM groups: towards (positive) or away from (negative) members"

    def detail(self, vm: VmRequest, ctx: Context, params: dict[str, int]) -> list[VmAffinityRule]:
        rules: list[VmAffinityRule] = []
        for name in vm.affinity_groups:
            group = ctx.groups.get(name)
            if group and not group.vm_enforcing and group.vm_rule != "disabled":
                sign = 1.0 if group.vm_rule == "positive" else -1.0
                rules.append((sign, dict(ctx.member_hosts(name, vm.name))))
        return rules

    def raw(self, table: HostTable, vm: VmRequest, detail: list[VmAffinityRule]) -> FloatColumn:
        score = np.zeros(table.size)
        for sign, counts in detail:
            for host, count in counts.items():
                if host in table.index:
                    score[table.index[host]] += sign * count
        return score

    def raw_one(self, host: HostState, vm: VmRequest, detail: list[VmAffinityRule]) -> float:
        return float(sum(sign * counts.get(host.name, 0) for sign, counts in detail))


class HostAffinitySoft(Weight):
    name = "host_affinity"
    description = "non-enforcing VM-to-host groups: towards (positive) or away from (negative) their hosts"

    def detail(self, vm: VmRequest, ctx: Context, params: dict[str, int]) -> list[HostAffinityRule]:
        return [(1.0 if g.host_rule == "positive" else -1.0, tuple(g.hosts)) for g in
                (ctx.groups.get(n) for n in vm.affinity_groups)
                if g and not g.host_enforcing and g.host_rule != "disabled"]

    def raw(self, table: HostTable, vm: VmRequest, detail: list[HostAffinityRule]) -> FloatColumn:
        score = np.zeros(table.size)
        for sign, hosts in detail:
            score += sign * table.names_mask(hosts)
        return score

    def raw_one(self, host: HostState, vm: VmRequest, detail: list[HostAffinityRule]) -> float:
        return float(sum(sign for sign, hosts in detail if host.name in hosts))


class PreferredHosts(Weight):
    name = "preferred_hosts"
    description = "prefer the hosts the VM names as preferred"

    def raw(self, table: HostTable, vm: VmRequest, detail: Any) -> FloatColumn:
        if not vm.preferred_hosts:
            return np.zeros(table.size)
        return table.names_mask(vm.preferred_hosts).astype(np.float64)

    def raw_one(self, host: HostState, vm: VmRequest, detail: Any) -> float:
        return 1.0 if host.name in vm.preferred_hosts else 0.0


class HaReservation(Weight):
    name = "ha_reservation"
    description = ("prefer the host where the VM leaves the fewest hosts whose highly available "
                   "VMs could not restart elsewhere (the cluster's HA reservation)")

    def detail(self, vm: VmRequest, ctx: Context, params: dict[str, int]) -> Any:
        return ctx.ha_vms

    def raw(self, table: HostTable, vm: VmRequest, detail: Any) -> FloatColumn:
        score = np.zeros(table.size)
        if detail is None:
            return score
        schedulable, physical = table.schedulable_mib(), table.physical_free_mib()
        up = [ha_reservation.Room(table.names[i], int(table.cpus[i]), int(schedulable[i]),
                                  int(physical[i])) for i in np.flatnonzero(table.up)]
        # Only where the VM can run at all: the rest are filtered out anyway.
        for room in up:
            if room.fits(vm) and room.name != vm.current_host:
                score[table.index[room.name]] = -len(
                    ha_reservation.shortfall_with(up, detail, vm, room.name))
        return score

    def raw_one(self, host: HostState, vm: VmRequest, detail: Any) -> float:
        if detail is None:
            return 0.0
        raise NotImplementedError("ha_reservation weighs a host against all the others: "
                                  "use raw() on the whole table")


WEIGHTS: dict[str, Weight] = {w.name: w for w in (
    CpuEven(), MemoryEven(), PowerCpu(), PowerMemory(), VmCountEven(), VmAffinitySoft(),
    HostAffinitySoft(), PreferredHosts(), HaReservation())}


def normalize(raw: FloatColumn) -> FloatColumn:
    """Scale to [0, 1] over the candidates; all equal -> all 0 (no opinion)."""
    if raw.size == 0:
        return raw
    low, high = float(raw.min()), float(raw.max())
    if high == low:
        return np.zeros_like(raw, dtype=np.float64)
    return (raw - low) / (high - low)


def normalize_one(values: list[float]) -> list[float]:
    if not values:
        return []
    low, high = min(values), max(values)
    if high == low:
        return [0.0] * len(values)
    return [(v - low) / (high - low) for v in values]
