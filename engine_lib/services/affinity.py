"""Affinity groups: oVirt's rules for keeping VMs together, apart, or on some hosts.

A group belongs to a cluster and carries two rules: a VM rule among its member
VMs (positive: together, negative: apart) and a host rule towards its listed
hosts. An enforcing rule is a scheduler filter, a non-enforcing one a weight.
VMs join a group through their spec's ``placement.affinity_groups``.
"""

from __future__ import annotations

from sqlalchemy import select

from engine_lib.model import AffinityGroup, Host
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.common import audit, get_cluster, retry_on_conflict
from engine_lib.services.results import Outcome
from engine_lib.spec import boolean, choice
from engine_lib.spec import name as check_name

RULES = ("positive", "negative", "disabled")


def group_dict(group: AffinityGroup, cluster: str) -> dict:
    return {"name": group.name, "cluster": cluster, "vm_rule": group.vm_rule,
            "vm_enforcing": group.vm_enforcing, "host_rule": group.host_rule,
            "host_enforcing": group.host_enforcing, "hosts": list(group.hosts)}


class AffinityService:
    def __init__(self, engine):
        self.engine = engine

    @retry_on_conflict
    def ensure(self, name: str, *, cluster: str, vm_rule: str | None = None,
               vm_enforcing: bool | None = None, host_rule: str | None = None,
               host_enforcing: bool | None = None, hosts: list[str] | None = None,
               check_mode: bool = False) -> Outcome:
        """Create or update a group; options left None keep their value."""
        check_name("name", name)
        wanted = {
            "vm_rule": None if vm_rule is None else choice("vm_rule", vm_rule, RULES),
            "vm_enforcing": None if vm_enforcing is None else boolean("vm_enforcing", vm_enforcing),
            "host_rule": None if host_rule is None else choice("host_rule", host_rule, RULES),
            "host_enforcing": None if host_enforcing is None
            else boolean("host_enforcing", host_enforcing),
            "hosts": None if hosts is None
            else sorted({check_name(f"hosts[{i}]", h) for i, h in enumerate(hosts)}),
        }
        with self.engine.store.transaction(commit=not check_mode) as session:
            target = get_cluster(session, cluster)
            if wanted["hosts"]:
                known = set(session.scalars(select(Host.name).where(
                    Host.cluster_id == target.id, Host.name.in_(wanted["hosts"]))))
                missing = [h for h in wanted["hosts"] if h not in known]
                if missing:
                    raise InvalidSpec("hosts", f"not hosts of cluster '{cluster}': "
                                               f"{', '.join(missing)}")
            group = self._find(session, target.id, name)
            before = group_dict(group, cluster) if group else {}
            if group is None:
                group = AffinityGroup(cluster_id=target.id, name=name, vm_rule="disabled",
                                      vm_enforcing=True, host_rule="disabled",
                                      host_enforcing=True, hosts=[])
                session.add(group)
            for key, value in wanted.items():
                if value is not None and getattr(group, key) != value:
                    setattr(group, key, value)
            session.flush()
            after = group_dict(group, cluster)
            if before != after:
                audit(session, "cluster", cluster, f"affinity group {name} "
                      f"{'created' if not before else 'updated'}: VM rule {group.vm_rule}, "
                      f"host rule {group.host_rule}")
            return Outcome(before != after, after, {"before": before, "after": after})

    @retry_on_conflict
    def remove(self, name: str, *, cluster: str, check_mode: bool = False) -> Outcome:
        with self.engine.store.transaction(commit=not check_mode) as session:
            target = get_cluster(session, cluster)
            group = self._find(session, target.id, name)
            if group is None:
                return Outcome(False, None, None)
            before = group_dict(group, cluster)
            session.delete(group)
            audit(session, "cluster", cluster, f"affinity group {name} removed")
            return Outcome(True, None, {"before": before, "after": {}})

    def info(self, cluster: str, name: str | None = None) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            target = get_cluster(session, cluster)
            query = select(AffinityGroup).where(AffinityGroup.cluster_id == target.id)
            if name:
                query = query.where(AffinityGroup.name == name)
            return [group_dict(g, cluster)
                    for g in session.scalars(query.order_by(AffinityGroup.name))]

    @staticmethod
    def _find(session, cluster_id: str, name: str) -> AffinityGroup | None:
        return session.scalars(select(AffinityGroup).where(
            AffinityGroup.cluster_id == cluster_id, AffinityGroup.name == name)).first()
