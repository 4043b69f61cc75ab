"""Storage domains: where VM disk volumes live, named once and attached to clusters.

A domain is a directory (``type: file``, at ``path``) or an NFS export
(``type: nfs``, ``export: server:/path``, mounted at ``path``). Hosts hold it
at the directory their agent is configured with (agent.conf [storage_domains],
set by the host role); the engine never writes host paths into domain XML, it
names the domain and the agent resolves it. Each host reports which domains
it has, so ``info`` shows per host whether a domain is available.

The rule for VM disks, compatible with clusters that predate this entity: a
cluster with no storage domain attached accepts any domain name (the agent
refuses names it does not know); once any domain is attached to the cluster,
a new disk must name one of the attached domains.
"""

from __future__ import annotations

import re

from sqlalchemy import select

from engine_lib.engine import Outcome
from engine_lib.errors import Conflict, InvalidSpec, NotFound
from engine_lib.model import Cluster, DeviceType, Host, StorageDomain, Vm, VmDevice
from engine_lib.services.common import audit, find, get_cluster, retry_on_conflict
from engine_lib.spec import choice, name as check_name, text

TYPES = ("file", "nfs")
# server:/path; the server a host name or an IPv4/bracketed IPv6 address.
EXPORT_RE = re.compile(r"^(?P<server>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>/[^\x00\s]*)$")


def domain_dict(domain: StorageDomain, hosts: dict[str, list | None] | None = None) -> dict:
    out = {"name": domain.name, "description": domain.description, "type": domain.type,
           "path": domain.path, "export": domain.export or None,
           "clusters": sorted(c.name for c in domain.clusters)}
    if hosts is not None:
        out["hosts"] = {host: _availability(domain.name, reported)
                        for host, reported in sorted(hosts.items())}
    return out


def _availability(name: str, reported: list | None) -> dict:
    """What one host's agent says about the domain."""
    if reported is None:
        return {"available": None, "reason": "the host has not reported its storage domains"}
    for entry in reported:
        if entry.get("name") == name:
            return {key: entry[key] for key in ("available", "path", "free_mib", "total_mib",
                                                "error") if key in entry}
    return {"available": False, "reason": "not configured on the host's agent"}


def absolute_path(field: str, value) -> str:
    value = text(field, value, 1024)
    if not value.startswith("/") or any(c in value for c in "\n\r\t") or \
            ".." in value.split("/"):
        raise InvalidSpec(field, f"must be an absolute path without '..' (got {value!r})")
    return value.rstrip("/") or "/"


def export(field: str, value) -> str:
    value = text(field, value, 1024)
    if not EXPORT_RE.match(value):
        raise InvalidSpec(field, f"must be an NFS export 'server:/path' (got {value!r})")
    return value


def attached_names(session, cluster: Cluster) -> set[str]:
    """Names of the storage domains attached to the cluster (empty: any name goes)."""
    return set(session.scalars(select(StorageDomain.name).join(StorageDomain.clusters)
                               .where(Cluster.id == cluster.id)))


def disk_users(session, domain: str, cluster_ids: list[str] | None = None) -> list[str]:
    """VMs (optionally of some clusters) with a disk on the domain."""
    query = select(Vm.name, VmDevice.spec).join(VmDevice).where(VmDevice.type == DeviceType.DISK)
    if cluster_ids is not None:
        query = query.where(Vm.cluster_id.in_(cluster_ids))
    return sorted({vm for vm, spec in session.execute(query)
                   if spec.get("storage_domain") == domain})


class StorageDomainService:
    def __init__(self, engine):
        self.engine = engine

    @retry_on_conflict
    def ensure(self, name: str, *, type: str | None = None, path: str | None = None,
               export: str | None = None, clusters: list[str] | None = None,
               description: str | None = None, check_mode: bool = False) -> Outcome:
        """Create or update a domain; ``clusters`` is the full list it is attached to.
        Options left None keep their value."""
        check_name("name", name)
        kind = None if type is None else choice("type", type, TYPES)
        wanted = {
            "path": None if path is None else absolute_path("path", path),
            "export": None if export is None else _export(export),
            "description": None if description is None else text("description", description),
        }
        cluster_names = None if clusters is None else \
            sorted({check_name(f"clusters[{i}]", c) for i, c in enumerate(clusters)})
        with self.engine.store.transaction(commit=not check_mode) as session:
            domain = find(session, StorageDomain, name)
            before = domain_dict(domain) if domain else {}
            if domain is None:
                if wanted["path"] is None:
                    raise InvalidSpec("path", "is required to create a storage domain (the "
                                              "directory hosts hold it at)")
                domain = StorageDomain(name=name, type=kind or "file", path="", export="",
                                       description="", clusters=[])
                session.add(domain)
            elif kind is not None and kind != domain.type:
                raise InvalidSpec("type", f"storage domain '{name}' is a {domain.type} domain; "
                                          "its type cannot change")
            for key, value in wanted.items():
                if value is not None and getattr(domain, key) != value:
                    setattr(domain, key, value)
            if domain.type == "nfs" and not domain.export:
                raise InvalidSpec("export", "is required for an nfs storage domain")
            if domain.type == "file" and domain.export:
                raise InvalidSpec("export", "applies to nfs storage domains only")
            if cluster_names is not None:
                self._attach(session, domain, cluster_names)
            session.flush()
            after = domain_dict(domain)
            changed = before != after
            entity = domain_dict(domain, self._hosts(session, domain))
            if changed:
                audit(session, "storage", name, f"storage domain {'updated' if before else 'created'}"
                      f": {domain.type} at {domain.path}, clusters "
                      f"{', '.join(after['clusters']) or 'none'}")
            return Outcome(changed, entity, {"before": before, "after": after})

    @staticmethod
    def _hosts(session, domain: StorageDomain) -> dict[str, list | None]:
        """Host name -> the storage domains its agent reported, for the domain's clusters."""
        return dict(session.execute(select(Host.name, Host.storage_domains).where(
            Host.cluster_id.in_([c.id for c in domain.clusters]))).all())

    @staticmethod
    def _attach(session, domain: StorageDomain, names: list[str]) -> None:
        wanted = [get_cluster(session, n) for n in names]
        dropped = [c for c in domain.clusters if c.name not in names]
        users = disk_users(session, domain.name, [c.id for c in dropped]) if dropped else []
        if users:
            raise Conflict(f"storage domain '{domain.name}' holds disks of VM(s) "
                           f"{', '.join(users)} in cluster(s) "
                           f"{', '.join(c.name for c in dropped)}; it cannot be detached", vms=users)
        if [c.name for c in domain.clusters] != names:
            domain.clusters = wanted

    @retry_on_conflict
    def remove(self, name: str, *, check_mode: bool = False) -> Outcome:
        with self.engine.store.transaction(commit=not check_mode) as session:
            domain = find(session, StorageDomain, name)
            if domain is None:
                return Outcome(False, None, None)
            users = disk_users(session, name)
            if users:
                raise Conflict(f"storage domain '{name}' holds disks of VM(s) {', '.join(users)}; "
                               "remove those disks first", vms=users)
            before = domain_dict(domain)
            session.delete(domain)
            audit(session, "storage", name, "storage domain removed")
            return Outcome(True, None, {"before": before, "after": {}})

    def info(self, name: str | None = None, cluster: str | None = None) -> list[dict]:
        """Domains with, per host of their clusters, whether the host has them."""
        with self.engine.store.transaction(commit=False) as session:
            query = select(StorageDomain).order_by(StorageDomain.name)
            if name:
                query = query.where(StorageDomain.name == name)
            domains = list(session.scalars(query))
            if name and not domains:
                raise NotFound("storage domain", name)
            if cluster:
                wanted = get_cluster(session, cluster)
                domains = [d for d in domains if wanted in d.clusters]
            return [domain_dict(d, self._hosts(session, d)) for d in domains]


def _export(value) -> str:
    return "" if value == "" else export("export", value)
