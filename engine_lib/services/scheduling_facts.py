"""The database as the scheduler sees it: rows in, HostState / VmRequest / Context out.

The scheduler is pure; this is the one place that knows which columns feed
which filter, so the placing transaction (services.vms._place) stays short.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine_lib.model import AffinityGroup as AffinityGroupRow
from engine_lib.model import Cluster, DeviceType, Host, Migration, Vm
from engine_lib.protocol.statuses import VmStatus
from engine_lib.scheduling import AffinityGroup, Context, HostState, VmRequest


@dataclass
class Claim:
    memory: int = 0
    vcpus: int = 0
    vms: int = 0


def host_claims(session: Session) -> dict[str, Claim]:
    """Host id -> what is claimed on it: by the VMs it runs or is about to run (oVirt's
    pending resources), and by the VMs migrating to it. An incoming VM holds its
    destination from the moment the migration is recorded until its outcome is (then it
    runs there, or it stays on its source), so nothing else can take that memory while
    it moves."""
    vcpus = Vm.sockets * Vm.cores * Vm.threads
    held = select(Vm.run_on_host_id, func.sum(Vm.memory_mib), func.sum(vcpus),
                  func.count(Vm.id)).where(
        Vm.status.in_(VmStatus.ACTIVE), Vm.run_on_host_id.is_not(None)
    ).group_by(Vm.run_on_host_id)
    incoming = select(Host.id, func.sum(Vm.memory_mib), func.sum(vcpus), func.count(Vm.id)) \
        .join(Migration, Migration.vm_id == Vm.id) \
        .join(Host, Host.name == Migration.destination) \
        .where(Migration.status == "running").group_by(Host.id)
    claims: dict[str, Claim] = {}
    for query in (held, incoming):
        for host_id, memory, cpus, count in session.execute(query):
            claim = claims.setdefault(host_id, Claim())
            claim.memory += int(memory or 0)
            claim.vcpus += int(cpus or 0)
            claim.vms += int(count)
    return claims


def host_state(host: Host, claim: Claim | None, cluster: Cluster) -> HostState:
    """``claim``: what is claimed on the host (``host_claims``), or None."""
    return HostState(
        name=host.name, status=host.status, cpus=host.cpus, memory_mib=host.memory_mib,
        claimed_mib=int(claim.memory) if claim else 0,
        overcommit_percent=cluster.memory_overcommit_percent,
        claimed_guaranteed_mib=int(claim.memory) if claim else 0,
        claimed_vcpus=int(claim.vcpus) if claim else 0,
        vm_count=int(claim.vms) if claim else 0,
        used_memory_mib=host.used_memory_mib or 0,
        used_cpu_percent=float(host.used_cpu_percent or 0.0),
        cpu_model=host.cpu_model or None,
        machines=None if host.machines is None else frozenset(host.machines),
        networks=None if host.networks is None else frozenset(host.networks),
        hooks=None if host.hooks is None else frozenset(host.hooks),
        hugepages_free={int(k): int(v) for k, v in (host.hugepages or {}).items()},
    )


def scheduling_request(vm: Vm, current_host: str | None = None) -> VmRequest:
    placement = getattr(vm, "placement", None) or {}
    ha = getattr(vm, "high_availability", None) or {}
    cpu_model = getattr(vm, "cpu_model", "") if getattr(vm, "cpu_mode", "") == "custom" else ""
    return VmRequest(
        name=vm.name, vcpus=vm.vcpus, memory_mib=vm.memory_mib,
        machine=vm.machine or None,
        cpu_model=cpu_model or None,
        networks=_bridges(vm),
        hooks=frozenset(placement.get("hooks", ())),
        pinned_hosts=tuple(placement.get("hosts", ())),
        affinity_groups=tuple(placement.get("affinity_groups", ())),
        current_host=current_host,
        hugepage_kib=getattr(vm, "hugepages_kib", 0) or None,
        highly_available=bool(ha.get("enabled", False)),
    )


def _bridges(vm: Vm) -> frozenset[str]:
    """Host bridges the VM needs: its NICs' and its cluster's required networks' (issue 9)."""
    bridges = {d.spec.get("bridge") or d.spec.get("network")
               for d in vm.devices_of(DeviceType.INTERFACE) if d.spec.get("network")}
    cluster = getattr(vm, "cluster", None)
    bridges |= {n.bridge for n in (getattr(cluster, "networks", None) or ()) if n.required}
    return frozenset(bridges)


def ha_vms(session: Session, cluster_id: str) -> dict[str, list[VmRequest]]:
    """Host name -> the highly available VMs active there (what HA would restart if it
    failed), with only the facts a restart's room depends on."""
    vcpus = Vm.sockets * Vm.cores * Vm.threads
    found: dict[str, list[VmRequest]] = {}
    rows = session.execute(
        select(Host.name, Vm.name, Vm.memory_mib, vcpus, Vm.high_availability)
        .join(Host, Vm.run_on_host_id == Host.id)
        .where(Vm.cluster_id == cluster_id, Vm.status.in_(VmStatus.ACTIVE))
        .order_by(Vm.name))
    for host, name, memory, cpus, ha in rows:
        if (ha or {}).get("enabled"):
            found.setdefault(host, []).append(
                VmRequest(name=name, vcpus=int(cpus), memory_mib=int(memory),
                          highly_available=True))
    return found


def placement_context(session: Session, cluster: Cluster) -> Context:
    """What a placement in ``cluster`` weighs besides the hosts: affinity, and the HA VMs
    when the cluster keeps an HA reservation."""
    ctx = affinity_context(session, cluster.id)
    if cluster.ha_reservation:
        ctx.ha_vms = ha_vms(session, cluster.id)
    return ctx


def affinity_context(session: Session, cluster_id: str) -> Context:
    """The cluster's affinity groups and where the active VMs in them run."""
    groups = [AffinityGroup(g.name, g.vm_rule, g.vm_enforcing, g.host_rule, g.host_enforcing,
                            tuple(g.hosts))
              for g in session.scalars(select(AffinityGroupRow)
                                       .where(AffinityGroupRow.cluster_id == cluster_id))]
    if not groups:
        return Context()
    running = session.execute(
        select(Vm.name, Host.name, Vm.placement).join(Host, Vm.run_on_host_id == Host.id)
        .where(Vm.cluster_id == cluster_id, Vm.status.in_(VmStatus.ACTIVE)))
    return Context(groups, ((vm, host, (placement or {}).get("affinity_groups", ()))
                            for vm, host, placement in running))
