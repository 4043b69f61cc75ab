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

Pure: one check packs every host's HA VMs once, at most O(HA VMs x hosts). The
placement weight asks it for every candidate host, and ``Reservation`` packs again
only the hosts a candidate can change, so a placement stays well under a second
at hundreds of hosts (make bench-scheduler's hosts are not HA-reserved).
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


def rooms(hosts: Iterable[HostState]) -> list[Room]:
    return [Room(h.name, h.cpus, h.schedulable_mib, h.physical_free_mib)
            for h in hosts if h.status == UP]


def _restart_order(vms: Iterable[VmRequest]) -> list[VmRequest]:
    return sorted(vms, key=lambda vm: (-vm.memory_mib, -vm.vcpus, vm.name))


# Room name -> (memory, guaranteed memory) that restarts packed there take.
Taken = dict[str, tuple[int, int]]


def pack(failed: str, vms: Sequence[VmRequest], up: Sequence[Room],
         taken: Taken | None = None) -> tuple[bool, Taken]:
    """First-fit-decreasing of ``vms`` (the HA VMs of ``failed``) onto the other rooms,
    less what ``taken`` already holds there: (all fit, what each room took)."""
    used: Taken = {}
    for vm in _restart_order(vms):
        for room in up:
            if room.name == failed or room.cpus < vm.vcpus:
                continue
            memory, guaranteed = used.get(room.name, (0, 0))
            held = taken.get(room.name, (0, 0)) if taken else (0, 0)
            if (room.schedulable_mib - memory - held[0] >= vm.memory_mib
                    and room.physical_free_mib - guaranteed - held[1] >= vm.guaranteed):
                used[room.name] = (memory + vm.memory_mib, guaranteed + vm.guaranteed)
                break
        else:
            return False, used
    return True, used


def fits_elsewhere(failed: str, vms: Sequence[VmRequest], up: Sequence[Room]) -> bool:
    """Whether all of ``vms`` (the HA VMs of ``failed``) restart on the other rooms."""
    return pack(failed, vms, up)[0]


def shortfall_of(up: Sequence[Room], ha_vms: HaVms) -> list[str]:
    """``shortfall`` over prepared rooms."""
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


def _after(ha_vms: HaVms, vm: VmRequest, host: str, failed: str) -> list[VmRequest]:
    """The HA VMs of ``failed`` once ``vm`` runs on ``host`` (and no longer where it was)."""
    vms = [v for v in ha_vms.get(failed, ()) if v.name != vm.name]
    return vms + [vm] if vm.highly_available and failed == host else vms


def shortfall_with(up: Sequence[Room], ha_vms: HaVms, vm: VmRequest, host: str) -> list[str]:
    """The shortfall once ``vm`` runs on ``host``: it takes its room there and counts among
    that host's HA VMs if highly available. A migrating VM keeps its claim on its source
    (as the placement's host table does until the migration ends)."""
    taken = {host: (vm.memory_mib, vm.guaranteed)}
    return sorted(r.name for r in up
                  if not pack(r.name, _after(ha_vms, vm, host, r.name), up, taken)[0])


class Reservation:
    """``shortfall_with`` for one VM on each candidate host, without packing every host
    again per candidate. Each host's packing is computed once; a candidate ``h`` changes
    another host's packing only if that packing put restarts on ``h`` and left less room
    there than the VM takes (otherwise every first-fit choice is the same, step by step).
    Only those, the candidate itself and the VM's current host are packed again, so a
    candidate costs what the packings that used it cost, not every host's."""

    def __init__(self, up: Sequence[Room], ha_vms: HaVms):
        self.up, self.ha_vms = list(up), ha_vms
        self.rooms = {r.name: r for r in self.up}
        self.base = {r.name: pack(r.name, ha_vms.get(r.name, ()), self.up) for r in self.up}
        self.short = {name for name, (ok, _used) in self.base.items() if not ok}
        # Room -> the hosts whose packing put restarts there.
        self.users: dict[str, list[str]] = {}
        for name, (_ok, used) in self.base.items():
            for room in used:
                self.users.setdefault(room, []).append(name)
        self.where = {vm.name: name for name, vms in ha_vms.items() for vm in vms}

    def shortfall_with(self, vm: VmRequest, host: str) -> list[str]:
        taken = {host: (vm.memory_mib, vm.guaranteed)}
        room = self.rooms[host]
        short = set(self.short)

        def again(failed: str, vms: Sequence[VmRequest]) -> None:
            if failed not in self.rooms:
                return
            if pack(failed, vms, self.up, taken)[0]:
                short.discard(failed)
            else:
                short.add(failed)

        changed = {host, self.where.get(vm.name, host)}
        for failed in changed:
            again(failed, _after(self.ha_vms, vm, host, failed))
        for failed in self.users.get(host, ()):
            memory, guaranteed = self.base[failed][1][host]
            if failed not in changed and (room.schedulable_mib - memory < vm.memory_mib or
                                          room.physical_free_mib - guaranteed < vm.guaranteed):
                again(failed, self.ha_vms.get(failed, ()))
        return sorted(short)
