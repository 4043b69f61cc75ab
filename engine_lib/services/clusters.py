"""Clusters: a set of hosts that share networks, storage and a MAC pool."""

from __future__ import annotations

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import object_session

from engine_lib import macpool
from engine_lib.model import Cluster, HaReservationCheck
from engine_lib.protocol import convergence
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.scheduling import policies as scheduling_policies
from engine_lib.services import access, listing
from engine_lib.services.common import (
    audit,
    changed_fields,
    find,
    get_cluster,
    iso_utc,
    retry_on_conflict,
)
from engine_lib.services.custom_properties import normalize_allowed
from engine_lib.services.fencing_settings import normalize_policy
from engine_lib.services.results import Outcome
from engine_lib.spec import boolean, choice, positive_int, text
from engine_lib.spec import name as check_name

VIRT_TYPES = ("kvm", "qemu")
# Column -> the option name users set it with, for messages.
_OPTION_NAMES = {"memory_overcommit_percent": "memory_overcommit"}


def cluster_dict(cluster: Cluster) -> dict:
    return {
        "id": cluster.id,
        "name": cluster.name,
        "description": cluster.description,
        "virt_type": cluster.virt_type,
        "memory_overcommit": cluster.memory_overcommit_percent,
        "mac_pool": list(cluster.mac_pool),
        "scheduling_policy": cluster.scheduling_policy,
        "scheduling_policy_properties": dict(cluster.scheduling_properties or {}),
        "migration_policy": cluster.migration_policy,
        "migration_bandwidth_mbps": cluster.migration_bandwidth_mbps,
        "migration_encrypted": bool(cluster.migration_encrypted),
        "fencing_policy": _fencing_policy(cluster.fencing_policy),
        "ballooning": bool(cluster.ballooning),
        "custom_properties": dict(cluster.custom_properties or {}),
        **ha_reservation_status(cluster),
    }


def ha_reservation_status(cluster: Cluster) -> dict:
    """The option and the engine loop's last check of it (engine_lib.loop.ha_reservation):
    ok None until a check ran (or with the option off)."""
    session = object_session(cluster)
    check = session.get(HaReservationCheck, cluster.id) \
        if session is not None and cluster.ha_reservation else None
    return {"ha_reservation": bool(cluster.ha_reservation),
            "ha_reservation_ok": None if check is None else bool(check.ok),
            "ha_reservation_detail": {} if check is None else
            {**dict(check.detail or {}), "checked_at": iso_utc(check.checked_at)}}


def _fencing_policy(stored: dict | None, given: dict | None = None) -> dict:
    """The full fencing policy; ``given`` (partial) overrides the stored one."""
    return normalize_policy("fencing_policy", {**normalize_policy("fencing_policy", stored or {}),
                                               **(given or {})})


def _scheduling(cluster: Cluster | None, policy: str | None, properties: dict | None) -> dict:
    """The scheduling columns to set: a new policy starts from its defaults unless the
    task gives properties too; properties alone are checked against the current policy."""
    if policy is None and properties is None:
        return {}
    current = cluster.scheduling_policy if cluster else None
    name = policy or current
    if properties is None:
        properties = {} if name != current else dict(cluster.scheduling_properties or {})
    resolved = scheduling_policies.resolve(name, properties)
    return {"scheduling_policy": resolved.name, "scheduling_properties": dict(resolved.values)}


def _migration_settings(policy: str | None, bandwidth_mbps: int | None) -> dict:
    """The cluster's convergence policy and per-migration bandwidth (0 = no limit)."""
    if bandwidth_mbps is not None and (isinstance(bandwidth_mbps, bool)
                                       or not isinstance(bandwidth_mbps, int)
                                       or not 0 <= bandwidth_mbps <= 1_000_000):
        raise InvalidSpec("migration_bandwidth_mbps", f"must be an integer from 0 (no limit) "
                                                      f"to 1000000, got {bandwidth_mbps!r}")
    return {"migration_policy": None if policy is None
            else choice("migration_policy", policy, convergence.POLICIES),
            "migration_bandwidth_mbps": bandwidth_mbps}


class ClusterService:
    def __init__(self, engine):
        self.engine = engine

    @retry_on_conflict
    def ensure(self, name: str, *, description: str | None = None, virt_type: str | None = None,
               memory_overcommit: int | None = None, mac_pool: list[str] | None = None,
               scheduling_policy: str | None = None,
               scheduling_policy_properties: dict | None = None,
               migration_policy: str | None = None, migration_bandwidth_mbps: int | None = None,
               migration_encrypted: bool | None = None,
               fencing_policy: dict | None = None, ballooning: bool | None = None,
               custom_properties: dict | None = None, ha_reservation: bool | None = None,
               check_mode: bool = False) -> Outcome:
        check_name("name", name)
        if fencing_policy is not None:
            _fencing_policy({}, fencing_policy)  # bad input fails before anything is read
        wanted = {
            "description": None if description is None else text("description", description),
            "virt_type": None if virt_type is None else choice("virt_type", virt_type, VIRT_TYPES),
            "memory_overcommit_percent": None if memory_overcommit is None
            else positive_int("memory_overcommit", memory_overcommit, 10000),
            "mac_pool": None if mac_pool is None
            else macpool.normalize_ranges("mac_pool", mac_pool),
            **_migration_settings(migration_policy, migration_bandwidth_mbps),
            "migration_encrypted": None if migration_encrypted is None
            else boolean("migration_encrypted", migration_encrypted),
            "ballooning": None if ballooning is None else boolean("ballooning", ballooning),
            "ha_reservation": None if ha_reservation is None
            else boolean("ha_reservation", ha_reservation),
            "custom_properties": None if custom_properties is None
            else normalize_allowed("custom_properties", custom_properties),
        }
        with self.engine.store.transaction(commit=not check_mode) as session:
            cluster = find(session, Cluster, name)
            wanted.update(_scheduling(cluster, scheduling_policy, scheduling_policy_properties))
            if fencing_policy is not None:
                current = _fencing_policy(cluster.fencing_policy if cluster else {})
                merged = _fencing_policy(current, fencing_policy)
                # Compared as effective policies: {} stored means the defaults.
                wanted["fencing_policy"] = merged if cluster is None or merged != current else None
            if cluster is None:
                cluster = Cluster(name=name, description="", virt_type="kvm",
                                  memory_overcommit_percent=100,
                                  mac_pool=list(macpool.DEFAULT_RANGES),
                                  scheduling_policy=scheduling_policies.DEFAULT_POLICY,
                                  scheduling_properties={}, custom_properties={})
                for key, value in wanted.items():
                    if value is not None:
                        setattr(cluster, key, value)
                session.add(cluster)
                session.flush()
                audit(session, "cluster", name, "cluster created")
                return Outcome(True, cluster_dict(cluster),
                               {"before": {}, "after": cluster_dict(cluster)})
            before = cluster_dict(cluster)
            updates = changed_fields(cluster, wanted)
            for key, value in updates.items():
                setattr(cluster, key, value)
            if updates:
                session.flush()
                changed = sorted(_OPTION_NAMES.get(key, key) for key in updates)
                audit(session, "cluster", name, f"cluster updated: {', '.join(changed)}")
            after = cluster_dict(cluster)
            return Outcome(bool(updates), after, {"before": before, "after": after})

    def scheduling_policies(self, name: str | None = None,
                            cluster: str | None = None) -> list[dict]:
        """The policies a cluster can choose (filters, weights with factors, balancer,
        parameters), or the one ``cluster`` uses with its parameter values."""
        if cluster is not None:
            with self.engine.store.transaction(commit=False) as session:
                found = get_cluster(session, cluster)
                return [scheduling_policies.resolve(
                    found.scheduling_policy, found.scheduling_properties,
                    ha_reservation=found.ha_reservation).describe()]
        if name is not None:
            return [scheduling_policies.resolve(name).describe()]
        return [policy.describe() for policy in scheduling_policies.POLICIES.values()]

    @retry_on_conflict
    def remove(self, name: str, *, check_mode: bool = False) -> Outcome:
        with self.engine.store.transaction(commit=not check_mode) as session:
            cluster = find(session, Cluster, name)
            if cluster is None:
                return Outcome(False, None, None)
            if cluster.hosts or cluster.vms:
                raise Conflict(f"cluster '{name}' still has {len(cluster.hosts)} host(s) and "
                               f"{len(cluster.vms)} VM(s); remove them first",
                               hosts=[h.name for h in cluster.hosts],
                               vms=[v.name for v in cluster.vms])
            before = cluster_dict(cluster)
            access.forget_object(session, "cluster", cluster.id)
            session.delete(cluster)
            audit(session, "cluster", name, "cluster removed")
            return Outcome(True, None, {"before": before, "after": {}})

    def get(self, name: str) -> dict:
        with self.engine.store.transaction(commit=False) as session:
            return cluster_dict(get_cluster(session, name))

    def info(self) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            return [cluster_dict(c)
                    for c in session.scalars(select(Cluster).order_by(Cluster.name))]

    def page(self, *, offset: int = 0, limit: int = listing.DEFAULT_LIMIT,
             name: str | None = None, status: str | None = None,
             visible: ColumnElement | None = None) -> dict:
        """One page of the clusters the caller may read, by name (services.listing); a
        cluster has no status to filter on."""
        with self.engine.store.transaction(commit=False) as session:
            return listing.page(session, select(Cluster).order_by(Cluster.name),
                                to_dict=cluster_dict, offset=offset, limit=limit, name=name,
                                name_column=Cluster.name, status=status,
                                visible=listing.readable(session, "cluster", visible))
