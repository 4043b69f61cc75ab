"""Filters: a host that fails one cannot run the VM, and the filter says why.

Each filter answers one question twice, with the same meaning: ``mask`` for the
whole host table at once (what placements use), ``check`` for one host (the
reason a person reads, and the per-host reference loop the benchmark and the
tests compare against). ``detail`` gathers, once per placement, the facts about
the VM's surroundings the filter needs (where its affinity partners run), so a
decision explained later still explains the moment it was made.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from engine_lib.scheduling import cpu_models
from engine_lib.scheduling.state import UP, Context, HostState, VmRequest
from engine_lib.scheduling.table import HostTable, Mask

# An affinity rule a filter enforces: (group, positive|negative, the hosts it names).
AffinityRule = tuple[str, str, frozenset[str]]


class Filter(abc.ABC):
    """One question about a host: a vectorized answer for the table, a reason for one host."""

    name = ""
    description = ""

    def detail(self, vm: VmRequest, ctx: Context) -> Any:
        return None

    def applies(self, vm: VmRequest, detail: Any) -> bool:
        """False when this VM asks nothing of this filter (every host passes)."""
        return True

    @abc.abstractmethod
    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        """Which hosts of the table pass."""

    @abc.abstractmethod
    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        """Why one host fails, or None when it passes."""


class Status(Filter):
    name = "status"
    description = "only hosts that are Up run VMs"

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        return table.up

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        return None if host.status == UP else f"host status is {host.status}, not Up"


class PinnedHosts(Filter):
    name = "pinned_hosts"
    description = "a VM pinned to hosts runs only on them"

    def applies(self, vm: VmRequest, detail: Any) -> bool:
        return bool(vm.pinned_hosts)

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        return table.names_mask(vm.pinned_hosts)

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        if not vm.pinned_hosts or host.name in vm.pinned_hosts:
            return None
        return f"the VM is pinned to {', '.join(vm.pinned_hosts)}"


class Migration(Filter):
    name = "migration"
    description = "a migrating VM never goes back to the host it runs on"

    def applies(self, vm: VmRequest, detail: Any) -> bool:
        return vm.current_host is not None

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        return ~table.names_mask([vm.current_host])

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        return "the VM already runs on this host" if host.name == vm.current_host else None


class Cpus(Filter):
    name = "cpu"
    description = "the host has at least as many CPUs as the VM has vCPUs"

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        return table.cpus >= vm.vcpus

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        if host.cpus >= vm.vcpus:
            return None
        return f"needs {vm.vcpus} vCPUs, host has {host.cpus} CPUs"


class Memory(Filter):
    name = "memory"
    description = ("memory within the cluster's overcommit, counting VMs already placed or "
                   "pending; guaranteed memory within physical free memory")

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        ok = table.schedulable_mib() >= vm.memory_mib
        if vm.guaranteed:
            ok &= table.physical_free_mib() >= vm.guaranteed
        return ok

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        if host.schedulable_mib < vm.memory_mib:
            return (f"needs {vm.memory_mib} MiB, has {max(host.schedulable_mib, 0)} MiB schedulable "
                    f"({host.memory_mib} MiB at {host.overcommit_percent}% overcommit, "
                    f"{host.claimed_mib} MiB claimed)")
        if vm.guaranteed and host.physical_free_mib < vm.guaranteed:
            return (f"guaranteed memory {vm.guaranteed} MiB exceeds the "
                    f"{max(host.physical_free_mib, 0)} MiB physically free")
        return None


class CpuModel(Filter):
    name = "cpu_model"
    description = "the host's CPU model is the VM's or a newer one of the same line"

    def applies(self, vm: VmRequest, detail: Any) -> bool:
        return vm.cpu_model is not None

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        return table.where(("cpu_model", vm.cpu_model), lambda h: self.check(h, vm, detail) is None)

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        if vm.cpu_model is None or host.cpu_model is None:
            return None
        if cpu_models.compatible(host.cpu_model, vm.cpu_model):
            return None
        return f"host CPU {host.cpu_model} cannot provide CPU model {vm.cpu_model}"


def _machine_supported(machines: frozenset[str], machine: str) -> bool:
    # 'q35' is satisfied by a versioned 'pc-q35-8.2'; 'pc' by 'pc-i440fx-*'.
    family = "i440fx" if machine == "pc" else machine
    return machine in machines or any(m.startswith(f"pc-{family}-") for m in machines)


class EmulatedMachine(Filter):
    name = "emulated_machine"
    description = "the host's QEMU offers the VM's machine type"

    def applies(self, vm: VmRequest, detail: Any) -> bool:
        return vm.machine is not None

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        return table.where(("machine", vm.machine), lambda h: self.check(h, vm, detail) is None)

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        if vm.machine is None or host.machines is None or _machine_supported(host.machines, vm.machine):
            return None
        return f"host offers machine types {', '.join(sorted(host.machines)) or 'none'}, not {vm.machine}"


class _Required(Filter):
    """A set of names the VM needs and the host must have all of."""

    attr = ""
    noun = ""

    def applies(self, vm: VmRequest, detail: Any) -> bool:
        return bool(getattr(vm, self.attr))

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        return table.where((self.attr, getattr(vm, self.attr)),
                           lambda h: self.check(h, vm, detail) is None)

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        have = getattr(host, self.attr)
        if have is None:
            return None
        missing = sorted(getattr(vm, self.attr) - have)
        return f"host lacks {self.noun} {', '.join(missing)}" if missing else None


class Networks(_Required):
    name = "network"
    description = "every network the VM's NICs use is present on the host"
    attr, noun = "networks", "network(s)"


class Hooks(_Required):
    name = "hooks"
    description = "the hooks the VM's custom properties need are installed on the host"
    attr, noun = "hooks", "hook(s)"


class HugePages(Filter):
    name = "hugepages"
    description = "enough free huge pages of the VM's page size"

    def applies(self, vm: VmRequest, detail: Any) -> bool:
        return bool(vm.hugepage_kib)

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        if not vm.hugepage_kib:  # no huge pages asked: every host passes, as in check
            return np.ones(table.size, dtype=bool)
        return table.hugepages_free(vm.hugepage_kib) >= vm.hugepages_needed

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        free = host.hugepages_free.get(vm.hugepage_kib, 0) if vm.hugepage_kib else 0
        if free >= vm.hugepages_needed:
            return None
        return (f"needs {vm.hugepages_needed} free {vm.hugepage_kib} KiB huge pages, "
                f"host has {free}")


class _AffinityRules(Filter):
    """Rules of the form (group, positive|negative, hosts): inside the hosts, or outside."""

    def applies(self, vm: VmRequest, detail: list[AffinityRule]) -> bool:
        return bool(detail)

    def mask(self, table: HostTable, vm: VmRequest, detail: list[AffinityRule]) -> Mask:
        ok = np.ones(table.size, dtype=bool)
        for _name, rule, hosts in detail:
            inside = table.names_mask(sorted(hosts))
            ok &= inside if rule == "positive" else ~inside
        return ok


class VmAffinity(_AffinityRules):
    """Enforcing VM-VM rules: positive keeps members together, negative apart."""

    name = "vm_affinity"
    description = "enforcing VM-to-VM affinity and anti-affinity groups"

    def detail(self, vm: VmRequest, ctx: Context) -> list[AffinityRule]:
        # (group, rule, hosts running other members) for each enforcing rule.
        rules: list[AffinityRule] = []
        for name in vm.affinity_groups:
            group = ctx.groups.get(name)
            if group and group.vm_enforcing and group.vm_rule != "disabled":
                partners = ctx.member_hosts(name, vm.name)
                if partners:
                    rules.append((name, group.vm_rule, frozenset(partners)))
        return rules

    def check(self, host: HostState, vm: VmRequest, detail: list[AffinityRule]) -> str | None:
        for name, rule, hosts in detail:
            if rule == "positive" and host.name not in hosts:
                return (f"affinity group {name} (positive, enforcing): its other VMs run on "
                        f"{', '.join(sorted(hosts))}")
            if rule == "negative" and host.name in hosts:
                return f"affinity group {name} (negative, enforcing): another VM of it runs here"
        return None


class HostAffinity(_AffinityRules):
    name = "host_affinity"
    description = "enforcing VM-to-host affinity groups"

    def detail(self, vm: VmRequest, ctx: Context) -> list[AffinityRule]:
        return [(g.name, g.host_rule, frozenset(g.hosts)) for g in
                (ctx.groups.get(n) for n in vm.affinity_groups)
                if g and g.host_enforcing and g.host_rule != "disabled"]

    def check(self, host: HostState, vm: VmRequest, detail: list[AffinityRule]) -> str | None:
        for name, rule, hosts in detail:
            if rule == "positive" and host.name not in hosts:
                return (f"affinity group {name} (positive, enforcing) allows only "
                        f"{', '.join(sorted(hosts))}")
            if rule == "negative" and host.name in hosts:
                return f"affinity group {name} (negative, enforcing) keeps its VMs off this host"
        return None


class ClusterMaintenance(Filter):
    name = "cluster_maintenance"
    description = "while the cluster is in maintenance only highly available VMs start"

    def applies(self, vm: VmRequest, detail: Any) -> bool:
        return not vm.highly_available

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        return np.zeros(table.size, dtype=bool)

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        return None if vm.highly_available else (
            "the cluster's policy is cluster_maintenance: only highly available VMs may start")


FILTERS: dict[str, Filter] = {f.name: f for f in (
    Status(), PinnedHosts(), Migration(), ClusterMaintenance(), Cpus(), Memory(), CpuModel(),
    EmulatedMachine(), Networks(), Hooks(), HugePages(), HostAffinity(), VmAffinity())}
