"""HA reservation (oVirt's cluster option): could the HA VMs of any one failed host restart?

The rule, for each Up host in turn as the one that fails (n+1 failover, as oVirt
checks it): its highly available VMs, largest memory first (ties by name), each
go to the first other Up host (in the order given) that the start path's own
capacity filters would accept for it — at least as many CPUs as the VM has
vCPUs, its memory within the host's schedulable memory (overcommit, claims of
the VMs it runs and of the restarts already packed onto it), its guaranteed
memory within the physically free memory — and that host's room shrinks by it
(first-fit-decreasing, as a restart sequence would consume it). A host whose HA
VMs do not all fit this way is in the shortfall. Hosts that are not Up neither
fail (their VMs are already HA's business) nor take restarts.

Pure and cheap: one pass is O(HA VMs x hosts), with no numpy, so the placement
weight can afford to ask it once per candidate host.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine_lib.scheduling.state import UP, HostState, VmRequest

HaVms = Mapping[str, Sequence[VmRequest]]


@dataclass
class Room:
    """What one Up host can still take: the start filters' cpu and memory facts."""

    name: str
    cpus: int
    schedulable_mib: int
    physical_free_mib: int

    def fits(self, vm: VmRequest) -> bool:
        return (self.cpus >= vm.vcpus and self.schedulable_mib >= vm.memory_mib
                and self.physical_free_mib >= vm.guaranteed)

    def take(self, vm: VmRequest) -> None:
        self.schedulable_mib -= vm.memory_mib
        self.physical_free_mib -= vm.guaranteed


def rooms(hosts: Iterable[HostState]) -> list[Room]:
    return [Room(h.name, h.cpus, h.schedulable_mib, h.physical_free_mib)
            for h in hosts if h.status == UP]


def _restart_order(vms: Iterable[VmRequest]) -> list[VmRequest]:
    return sorted(vms, key=lambda vm: (-vm.memory_mib, -vm.vcpus, vm.name))


def fits_elsewhere(failed: str, vms: Sequence[VmRequest], up: Sequence[Room]) -> bool:
    """Whether all of ``vms`` (the HA VMs of ``failed``) restart on the other rooms."""
    if not vms:
        return True
    others = [Room(r.name, r.cpus, r.schedulable_mib, r.physical_free_mib)
              for r in up if r.name != failed]
    for vm in _restart_order(vms):
        room = next((r for r in others if r.fits(vm)), None)
        if room is None:
            return False
        room.take(vm)
    return True


def shortfall_of(up: Sequence[Room], ha_vms: HaVms) -> list[str]:
    """``shortfall`` over prepared rooms (the weight reuses them per candidate)."""
    return sorted(r.name for r in up if not fits_elsewhere(r.name, ha_vms.get(r.name, ()), up))


def shortfall(hosts: Sequence[HostState], ha_vms: HaVms) -> list[str]:
    """Names of the Up hosts whose HA VMs could NOT all restart on the other Up hosts.

    ``ha_vms``: host name -> the highly available VMs running there.
    """
    return shortfall_of(rooms(hosts), ha_vms)


def can_spare(hosts: Sequence[HostState], ha_vms: HaVms, host: str) -> bool:
    """Whether ``host`` can leave (be powered down, go to maintenance) with still no
    shortfall among the Up hosts that remain; a host running HA VMs never can, since
    they would have to restart first."""
    if ha_vms.get(host):
        return False
    return not shortfall([h for h in hosts if h.name != host], ha_vms)


def shortfall_with(up: Sequence[Room], ha_vms: HaVms, vm: VmRequest, host: str) -> list[str]:
    """The shortfall once ``vm`` runs on ``host`` (taking its room there, and counting
    among that host's HA VMs if it is highly available). ``vm`` is left out wherever
    ``ha_vms`` lists it already (a migrating VM leaves its current host)."""
    after = [Room(r.name, r.cpus, r.schedulable_mib, r.physical_free_mib) for r in up]
    for room in after:
        if room.name == host:
            room.take(vm)
        elif room.name == vm.current_host:  # once migrated, its source has that room again
            room.schedulable_mib += vm.memory_mib
            room.physical_free_mib += vm.guaranteed
    moved: dict[str, list[VmRequest]] = {name: [v for v in vms if v.name != vm.name]
                                         for name, vms in ha_vms.items()}
    if vm.highly_available:
        moved.setdefault(host, []).append(vm)
    return shortfall_of(after, moved)
