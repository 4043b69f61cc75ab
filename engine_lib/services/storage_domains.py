"""Storage domains: where VM disk volumes live, named once and attached to clusters.

A domain is a directory (``type: file``, at ``path``, under a directory the
administrator allowed in engine.conf) or an NFS export (``type: nfs``,
``export: server:/path``, mounted at ``path``, a directory directly under the
fixed mount root, by default ``<mount root>/<name>``). Hosts hold it
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

import logging

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import selectinload

from engine_lib.model import Cluster, DeviceType, Host, StorageDomain, Vm, VmDevice
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError, NotFound
from engine_lib.protocol.statuses import HostStatus
from engine_lib.protocol.storage import EXPORT_RE, default_mount_point, mount_point, under_roots
from engine_lib.services import listing
from engine_lib.services.common import audit, find, get_cluster, retry_on_conflict
from engine_lib.services.host_records import HostRef
from engine_lib.services.results import Outcome
from engine_lib.spec import choice, text
from engine_lib.spec import name as check_name

log = logging.getLogger("kestrel.engine.storage_domains")

TYPES = ("file", "nfs")


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
                if wanted["path"] is None and kind != "nfs":
                    raise InvalidSpec("path", "is required to create a file storage domain "
                                              "(the directory hosts hold it at)")
                domain = StorageDomain(name=name, type=kind or "file",
                                       path="" if kind != "nfs" else default_mount_point(name),
                                       export="",
                                       description="", clusters=[])
                session.add(domain)
            elif kind is not None and kind != domain.type:
                raise InvalidSpec("type", f"storage domain '{name}' is a {domain.type} domain; "
                                          "its type cannot change")
            for key, value in wanted.items():
                if value is not None and getattr(domain, key) != value:
                    setattr(domain, key, value)
            if domain.type == "nfs":
                mount_point("path", domain.path)
            else:
                under_roots("path", domain.path, self.engine.config.file_domain_roots)
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
                audit(session, "storage", name,
                      f"storage domain {'updated' if before else 'created'}"
                      f": {domain.type} at {domain.path}, clusters "
                      f"{', '.join(after['clusters']) or 'none'}")
            outcome = Outcome(changed, entity, {"before": before, "after": after})
            is_nfs = domain.type == "nfs"
        if is_nfs and not check_mode and changed:
            # Attach connects the domain on the Up hosts of the new clusters, detach disconnects.
            attached = set(after["clusters"]) - set(before.get("clusters", []))
            detached = set(before.get("clusters", [])) - set(after["clusters"])
            for host in _up_hosts(self.engine, attached):
                connect_host(self.engine, host.name, only=name)
            disconnect_hosts(self.engine, name, _up_hosts(self.engine, detached))
            outcome = Outcome(changed, self.info(name)[0], outcome.diff)
        return outcome

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
                           f"{', '.join(c.name for c in dropped)}; it cannot be detached",
                           vms=users)
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
        if before["type"] == "nfs" and not check_mode:
            disconnect_hosts(self.engine, name, _up_hosts(self.engine, set(before["clusters"])))
        return Outcome(True, None, {"before": before, "after": {}})

    def page(self, *, offset: int = 0, limit: int = listing.DEFAULT_LIMIT,
             name: str | None = None, cluster: str | None = None, status: str | None = None,
             visible: ColumnElement | None = None) -> dict:
        """One page of the domains, by name (services.listing), with per host of their
        clusters whether it has them; the page's clusters and hosts in one query each.
        A domain has no status to filter on; ``visible`` narrows the rows."""
        with self.engine.store.transaction(commit=False) as session:
            query = select(StorageDomain).options(
                selectinload(StorageDomain.clusters).selectinload(Cluster.hosts)
            ).order_by(StorageDomain.name)
            if cluster is not None:
                query = query.where(StorageDomain.clusters.any(
                    Cluster.name == listing.filter_text("cluster", cluster, 64)))
            return listing.page(session, query, to_dict=lambda d: domain_dict(d, {
                h.name: h.storage_domains for c in d.clusters for h in c.hosts}),
                offset=offset, limit=limit, name=name, name_column=StorageDomain.name,
                status=status, visible=visible)

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


# -- connecting NFS domains on hosts (VDSM's connectStorageServer) ----------------------

def connect_host(engine, host: str, only: str | None = None) -> list[dict]:
    """Have the host's agent mount every nfs domain attached to its cluster (or just
    ``only``), as oVirt does when a host is activated.

    Never raises for what an agent answers: a domain that cannot be connected is
    audited with the reason and recorded unavailable in the host's storage facts
    (the scheduler and ``info`` read those), and the others are still connected.
    """
    with engine.store.transaction(commit=False) as session:
        row = find(session, Host, host)
        if row is None or row.status != HostStatus.UP:
            return []
        address, port = row.address, row.port
        query = (select(StorageDomain).join(StorageDomain.clusters)
                 .where(Cluster.id == row.cluster_id, StorageDomain.type == "nfs")
                 .order_by(StorageDomain.name))
        if only is not None:
            query = query.where(StorageDomain.name == only)
        wanted = [(d.name, d.export, d.path) for d in session.scalars(query)]
    results = []
    for name, export_, path in wanted:
        try:
            answer = engine.agent(address, port).connect_storage(name, export_, path)
            results.append({"name": name, "path": path, "export": export_, "available": True,
                            "changed": bool(answer.get("changed"))})
        except KestrelError as err:
            results.append({"name": name, "path": path, "export": export_, "available": False,
                            "error": err.message})
    if results:
        try:
            _record_connections(engine, host, results)
        except KestrelError as err:  # the host row kept changing; the next heartbeat reports
            log.warning("could not record storage connections of host %s: %s", host,
                        err.message)
    return results


def nfs_unreported(session, host: Host) -> bool:
    """Whether an nfs domain of the host's cluster is missing from its agent's facts.

    An agent keeps its connections in memory, so a restarted or reinstalled one
    forgets them; the heartbeat then connects again. A failed connect is in the
    facts (unavailable, with the error) and is not retried on every heartbeat: a
    mount may take a minute; the next time the host comes Up retries it.
    """
    if not isinstance(host.storage_domains, list):
        return False  # not reported at all: nothing to compare
    reported = {entry.get("name") for entry in host.storage_domains if isinstance(entry, dict)}
    attached = session.scalars(select(StorageDomain.name).join(StorageDomain.clusters).where(
        Cluster.id == host.cluster_id, StorageDomain.type == "nfs"))
    return any(name not in reported for name in attached)


def disconnect_hosts(engine, domain: str, hosts: list[HostRef]) -> None:
    """Unmount the domain on each host; a refusal (a VM there still uses it) is audited."""
    for host in hosts:
        try:
            answer = engine.agent(host.address, host.port).disconnect_storage(domain)
        except KestrelError as err:
            _audit_host(engine, host.name, f"storage domain '{domain}' could not be "
                        f"disconnected: {err.message}", "warning")
            continue
        if answer.get("changed"):
            _audit_host(engine, host.name, f"storage domain '{domain}' disconnected "
                        f"({answer.get('path')} unmounted)")


def _up_hosts(engine, cluster_names: set[str]) -> list[HostRef]:
    if not cluster_names:
        return []
    query = (select(Host).join(Host.cluster)
             .where(Cluster.name.in_(sorted(cluster_names)), Host.status == HostStatus.UP)
             .order_by(Host.name))
    with engine.store.transaction(commit=False) as session:
        return [HostRef.of(host) for host in session.scalars(query)]


@retry_on_conflict
def _record_connections(engine, host: str, results: list[dict]) -> None:
    with engine.store.transaction() as session:
        row = find(session, Host, host)
        if row is None:
            return
        facts = {e.get("name"): e for e in (row.storage_domains or []) if isinstance(e, dict)}
        for result in results:
            name = result["name"]
            if result["available"]:
                if not (facts.get(name) or {}).get("available"):
                    facts[name] = {"name": name, "path": result["path"], "available": True}
                if result["changed"]:
                    audit(session, "host", host, f"storage domain '{name}' connected: "
                          f"{result['export']} mounted at {result['path']}")
            else:
                facts[name] = {"name": name, "path": result["path"], "available": False,
                               "error": result["error"]}
                audit(session, "host", host, f"storage domain '{name}' is unavailable on this "
                      f"host: {result['error']}", "warning")
        row.storage_domains = [facts[n] for n in sorted(facts)]


def _audit_host(engine, host: str, message: str, severity: str = "info") -> None:
    with engine.store.transaction() as session:
        audit(session, "host", host, message, severity)
