"""What the scheduler is asked about: hosts, the VM to place, affinity groups.

Plain frozen values, so the scheduler stays pure: whoever builds them (the
engine from its database, ``kestrel schedule`` from YAML, a benchmark) owns the
I/O. A host fact that is ``None`` was not reported by the host; filters that
need it let the host pass rather than guess it lacks the fact.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

UP = "Up"
VM_RULES = ("positive", "negative", "disabled")


@dataclass(frozen=True)
class HostState:
    name: str
    status: str
    cpus: int
    memory_mib: int
    # Memory of the VMs this host runs or is about to run (pending included).
    claimed_mib: int = 0
    overcommit_percent: int = 100
    # Guaranteed memory of those VMs: must fit in physical memory, overcommit or not.
    claimed_guaranteed_mib: int = 0
    # vCPUs of those VMs; a vCPU not yet measured counts as fully busy.
    claimed_vcpus: int = 0
    # Measured by the host (0 when nothing measured yet).
    used_memory_mib: int = 0
    used_cpu_percent: float = 0.0
    vm_count: int = 0
    cpu_model: str | None = None
    machines: frozenset[str] | None = None
    networks: frozenset[str] | None = None
    hooks: frozenset[str] | None = None
    # Huge page size in KiB -> free pages of that size.
    hugepages_free: Mapping[int, int] = field(default_factory=dict)

    @property
    def schedulable_mib(self) -> int:
        return self.memory_mib * self.overcommit_percent // 100 - self.claimed_mib

    @property
    def physical_free_mib(self) -> int:
        return self.memory_mib - max(self.used_memory_mib, self.claimed_guaranteed_mib)

    def cpu_load_with(self, vcpus: int) -> float:
        """Predicted CPU load in percent once ``vcpus`` more busy vCPUs run here."""
        return self.used_cpu_percent + 100.0 * (self.claimed_vcpus + vcpus) / max(self.cpus, 1)


@dataclass(frozen=True)
class VmRequest:
    name: str
    vcpus: int
    memory_mib: int
    guaranteed_mib: int | None = None
    machine: str | None = None
    cpu_model: str | None = None
    networks: frozenset[str] = frozenset()
    # Hooks the VM's custom properties need on the host.
    hooks: frozenset[str] = frozenset()
    pinned_hosts: tuple[str, ...] = ()
    preferred_hosts: tuple[str, ...] = ()
    affinity_groups: tuple[str, ...] = ()
    # Set when the VM is migrating: it must leave this host.
    current_host: str | None = None
    hugepage_kib: int | None = None
    highly_available: bool = False

    @property
    def guaranteed(self) -> int:
        return self.memory_mib if self.guaranteed_mib is None else self.guaranteed_mib

    @property
    def hugepages_needed(self) -> int:
        if not self.hugepage_kib:
            return 0
        return math.ceil(self.memory_mib * 1024 / self.hugepage_kib)


@dataclass(frozen=True)
class AffinityGroup:
    """oVirt's affinity group: a VM rule among its member VMs and a host rule.

    Members are the VMs whose ``placement.affinity_groups`` name the group.
    An enforcing rule is a filter; a non-enforcing one is a weight.
    """

    name: str
    vm_rule: str = "disabled"
    vm_enforcing: bool = True
    host_rule: str = "disabled"
    host_enforcing: bool = True
    hosts: tuple[str, ...] = ()


class Context:
    """The cluster around one placement: affinity groups and where their members run.

    Mutable on purpose: a simulation records each placement so the next VM's
    affinity sees it. The scheduler only reads it.
    """

    def __init__(self, groups: Iterable[AffinityGroup] = (),
                 running: Iterable[tuple[str, str, Iterable[str]]] = (),
                 ha_vms: Mapping[str, Sequence[VmRequest]] | None = None):
        self.groups: dict[str, AffinityGroup] = {g.name: g for g in groups}
        # Host -> the highly available VMs it runs, for the ha_reservation weight; None
        # when the cluster has no HA reservation.
        self.ha_vms = ha_vms
        # group -> VM name -> host name
        self._members: dict[str, dict[str, str]] = {}
        for vm, host, groups_of_vm in running:
            self.record(vm, host, groups_of_vm)

    def record(self, vm: str, host: str, groups: Iterable[str]) -> None:
        for group in groups:
            self._members.setdefault(group, {})[vm] = host

    def forget(self, vm: str, groups: Iterable[str]) -> None:
        for group in groups:
            self._members.get(group, {}).pop(vm, None)

    def member_hosts(self, group: str, excluding: str) -> Counter[str]:
        """Host -> how many other members of ``group`` run there."""
        return Counter(host for vm, host in self._members.get(group, {}).items() if vm != excluding)

    def members_on(self, group: str, host: str, excluding: str) -> list[str]:
        return sorted(vm for vm, h in self._members.get(group, {}).items()
                      if h == host and vm != excluding)
