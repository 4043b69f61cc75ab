"""Place one VM: filters remove hosts (each with a reason), a weight ranks the rest.

This is the foundation's policy: status, memory with the cluster's overcommit
and the claims of VMs already placed (running or still launching), and CPU
count; the host with the most memory left after placement wins. The decision
always explains itself, so "why didn't my VM start there?" is one call away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class HostState:
    name: str
    status: str
    cpus: int
    memory_mib: int
    # Memory of the VMs this host runs or is about to run.
    claimed_mib: int = 0
    overcommit_percent: int = 100

    @property
    def schedulable_mib(self) -> int:
        return self.memory_mib * self.overcommit_percent // 100 - self.claimed_mib


@dataclass(frozen=True)
class VmRequest:
    name: str
    vcpus: int
    memory_mib: int


@dataclass
class Decision:
    host: str | None
    # Host name -> why a filter removed it.
    filtered: dict[str, str] = field(default_factory=dict)
    # Host name -> score of the hosts that passed every filter (higher wins).
    weights: dict[str, float] = field(default_factory=dict)

    def explain(self) -> dict:
        return {"host": self.host, "filtered": dict(self.filtered), "weights": dict(self.weights)}


Filter = Callable[[HostState, VmRequest], "str | None"]


def host_up(host: HostState, _vm: VmRequest) -> str | None:
    return None if host.status == "Up" else f"host status is {host.status}, not Up"


def enough_memory(host: HostState, vm: VmRequest) -> str | None:
    if host.schedulable_mib >= vm.memory_mib:
        return None
    return (f"needs {vm.memory_mib} MiB, has {max(host.schedulable_mib, 0)} MiB schedulable "
            f"({host.memory_mib} MiB at {host.overcommit_percent}% overcommit, "
            f"{host.claimed_mib} MiB claimed)")


def enough_cpus(host: HostState, vm: VmRequest) -> str | None:
    if host.cpus >= vm.vcpus:
        return None
    return f"needs {vm.vcpus} vCPUs, host has {host.cpus} CPUs"


FILTERS: tuple[Filter, ...] = (host_up, enough_memory, enough_cpus)


def place(vm: VmRequest, hosts: list[HostState]) -> Decision:
    decision = Decision(host=None)
    for host in hosts:
        for check in FILTERS:
            reason = check(host, vm)
            if reason:
                decision.filtered[host.name] = reason
                break
        else:
            decision.weights[host.name] = float(host.schedulable_mib - vm.memory_mib)
    if decision.weights:
        # Ties go to the name that sorts first, so a decision is reproducible.
        decision.host = min(decision.weights, key=lambda name: (-decision.weights[name], name))
    return decision
