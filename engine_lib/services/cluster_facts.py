"""One cluster as the scheduler sees it, read in one transaction.

Maintenance asks "where can each VM of this host go, all of them together?"
and the balancer asks "which VM should move?": both need every host with the
resources its active VMs claim, the VMs that run, the cluster's policy and its
affinity context. The rows-to-values mapping itself stays in scheduling_facts.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib.model import Cluster, Host, Vm
from engine_lib.protocol.statuses import VmStatus
from engine_lib.scheduling import Context, HostState, Policy, VmRequest, resolve
from engine_lib.services.scheduling_facts import (
    host_claims,
    host_state,
    placement_context,
    scheduling_request,
)


@dataclass(frozen=True)
class RunningVm:
    name: str
    host: str
    status: str
    # Its scheduling request with current_host set: a migration must leave that host.
    request: VmRequest


@dataclass(frozen=True)
class ClusterFacts:
    name: str
    policy: Policy
    hosts: list[HostState]
    running: list[RunningVm]
    context: Context

    def on(self, host: str) -> list[RunningVm]:
        return [vm for vm in self.running if vm.host == host]


def load(session: Session, cluster: Cluster) -> ClusterFacts:
    hosts = list(session.scalars(select(Host).where(Host.cluster_id == cluster.id)
                                 .order_by(Host.name)))
    claims = host_claims(session)
    running = [RunningVm(vm.name, vm.run_on_host.name, vm.status,
                         scheduling_request(vm, current_host=vm.run_on_host.name))
               for vm in session.scalars(
                   select(Vm).where(Vm.cluster_id == cluster.id, Vm.status.in_(VmStatus.ACTIVE),
                                    Vm.run_on_host_id.is_not(None)).order_by(Vm.name))]
    return ClusterFacts(cluster.name,
                        resolve(cluster.scheduling_policy, cluster.scheduling_properties,
                                ha_reservation=cluster.ha_reservation),
                        [host_state(h, claims.get(h.id), cluster) for h in hosts],
                        running, placement_context(session, cluster))
