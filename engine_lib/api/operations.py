"""The catalog: every operation the API offers, the facade method it calls, its HTTP
method and path, and the permission the route requires before calling it.

The operationId is the facade path (``vms.ensure`` calls ``engine.vms.ensure``), so the
API can do nothing the modules and the CLI cannot. Parameters come from the method's
signature (routes.py): a parameter named in the path is a path parameter, the others are
the JSON body (PUT, POST) or the query (GET, DELETE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from engine_lib.model import Backup, Cluster, Host, Template, Vm

__all__ = ["CATALOG", "BY_ID", "Check", "Operation"]

# (permission, object type, object name), or None: nothing beyond an authenticated user.
Check = tuple[str, str, str] | None
Rule = Callable[[Any, Mapping[str, Any]], Check]


@dataclass(frozen=True)
class Operation:
    id: str  # "<facade attribute>.<method>"
    method: str
    path: str  # below /api/v1
    rule: Rule
    summary: str
    # outcome -> {changed, entity, diff}; page -> {items, total, offset, limit};
    # value -> the method's return value; text -> {"text": value}
    returns: str = "outcome"
    long: bool = False  # a job: 202 {"job": ...} unless check_mode
    # Path parameter -> "argument.key" when it comes from inside an argument.
    path_from: Mapping[str, str] = field(default_factory=dict)
    # Parameters that never appear (host paths, callbacks).
    exclude: frozenset[str] = frozenset({"progress"})
    # Lists: the object type whose 'read' filters the items (access.visible), and
    # whether the entity has a status to filter on.
    visible: str = ""
    status: bool = False
    # Routes written by hand elsewhere (disk content streams): listed, not generated.
    stream: str = ""

    @property
    def service(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def function(self) -> str:
        return self.id.split(".", 1)[1]


# -- permission rules ------------------------------------------------------------------------


def on_system(permission: str) -> Rule:
    return lambda _engine, _args: (permission, "system", "")


def on(permission: str, object_type: str, param: str) -> Rule:
    return lambda _engine, args: (permission, object_type, str(args.get(param) or ""))


def authenticated(_engine, _args) -> Check:
    return None


def _exists(engine, model, name: str) -> bool:
    with engine.store.transaction(commit=False) as session:
        return session.scalar(select(model.id).where(model.name == name).limit(1)) is not None


def _vm_cluster(engine, vm: str) -> str | None:
    with engine.store.transaction(commit=False) as session:
        return session.scalar(select(Cluster.name).join(Vm, Vm.cluster_id == Cluster.id)
                              .where(Vm.name == vm))


def _cluster_ensure(engine, args) -> Check:
    if _exists(engine, Cluster, args["name"]):
        return ("cluster.edit", "cluster", args["name"])
    return ("cluster.create", "system", "")


def _host_ensure(engine, args) -> Check:
    if _exists(engine, Host, args["name"]):
        return ("host.edit", "host", args["name"])
    return ("host.create", "cluster", args.get("cluster") or "")


def _template_ensure(engine, args) -> Check:
    name = args["name"]
    if args.get("state") == "absent":
        return ("template.delete", "template", name)
    if _exists(engine, Template, name):
        return ("template.edit", "template", name)
    cluster = (_vm_cluster(engine, args["vm"]) if args.get("vm") else None) or args.get("cluster")
    return ("template.create", "cluster", cluster) if cluster else ("template.create", "system", "")


def _on_backup(engine, args) -> Check:
    """vm.backup on the VM a backup is of (a removed VM's backups: on the system)."""
    with engine.store.transaction(commit=False) as session:
        vm = session.scalar(select(Backup.vm_name).where(Backup.id == args["backup_id"]))
    if vm is not None and _exists(engine, Vm, vm):
        return ("vm.backup", "vm", vm)
    return ("vm.backup", "system", "")


def _events(_engine, args) -> Check:
    if args.get("entity_type") in ("cluster", "host", "vm", "template") and args.get("entity_name"):
        return ("read", args["entity_type"], args["entity_name"])
    return ("read", "system", "")


# -- the catalog -----------------------------------------------------------------------------


def _op(id: str, method: str, path: str, rule: Rule, summary: str, **kwargs) -> Operation:
    return Operation(id, method, path, rule, summary, **kwargs)


_READ = on_system("read")
# A list of what the caller may read (access.visible): anyone may ask.
_FILTERED = authenticated
_ACCESS = on_system("access.manage")
_STORAGE = on_system("storage.manage")

CATALOG: tuple[Operation, ...] = (
    # clusters
    _op("clusters.info", "GET", "/clusters", _FILTERED, "List clusters", returns="page",
        visible="cluster"),
    _op("clusters.get", "GET", "/clusters/{name}", on("read", "cluster", "name"),
        "Show a cluster", returns="value"),
    _op("clusters.ensure", "PUT", "/clusters/{name}", _cluster_ensure,
        "Create or change a cluster"),
    _op("clusters.remove", "DELETE", "/clusters/{name}", on("cluster.delete", "cluster", "name"),
        "Remove a cluster"),
    _op("clusters.scheduling_policies", "GET", "/scheduling_policies", _READ,
        "List scheduling policies", returns="value"),
    # hosts
    _op("hosts.info", "GET", "/hosts", _FILTERED, "List hosts", returns="page", visible="host",
        status=True),
    _op("hosts.ensure", "PUT", "/hosts/{name}", _host_ensure, "Add or change a host", long=True),
    _op("hosts.remove", "DELETE", "/hosts/{name}", on("host.delete", "host", "name"),
        "Remove a host"),
    _op("hosts.maintenance", "POST", "/hosts/{name}/maintenance",
        on("host.maintenance", "host", "name"), "Move a host to maintenance", long=True),
    _op("hosts.activate", "POST", "/hosts/{name}/activate",
        on("host.maintenance", "host", "name"), "Activate a host", long=True),
    _op("hosts.reinstall", "POST", "/hosts/{name}/reinstall", on("host.edit", "host", "name"),
        "Reinstall a host", long=True),
    _op("stats.host", "GET", "/hosts/{name}/statistics", on("read", "host", "name"),
        "A host's current figures and their history", returns="value"),
    # VMs
    _op("vms.info", "GET", "/vms", _FILTERED, "List VMs", returns="page", visible="vm", status=True),
    # Create, change, power and remove in one: the service checks what applies.
    _op("vms.ensure", "PUT", "/vms/{name}", authenticated, "Create, change, start, stop or "
        "remove a VM", long=True, path_from={"name": "spec.name"}),
    _op("vms.domain_xml", "GET", "/vms/{name}/domain_xml", on("vm.console", "vm", "name"),
        "A VM's domain XML", returns="text"),
    _op("vms.console", "GET", "/vms/{name}/console", on("vm.console", "vm", "name"),
        "The tail of a VM's serial console", returns="text"),
    _op("stats.vm", "GET", "/vms/{name}/statistics", on("read", "vm", "name"),
        "A VM's current figures and their history", returns="value"),
    _op("migrations.migrate", "POST", "/vms/{vm}/migrate", on("vm.migrate", "vm", "vm"),
        "Migrate a VM", long=True),
    _op("migrations.cancel", "DELETE", "/vms/{vm}/migration", on("vm.migrate", "vm", "vm"),
        "Cancel a VM's migration"),
    _op("migrations.history", "GET", "/vms/{vm}/migrations", on("read", "vm", "vm"),
        "A VM's migrations", returns="value"),
    _op("migrations.active", "GET", "/migrations", _READ, "Migrations under way",
        returns="value"),
    _op("snapshots.info", "GET", "/vms/{vm}/snapshots", on("read", "vm", "vm"),
        "A VM's snapshots, oldest first", returns="value"),
    _op("snapshots.create", "POST", "/vms/{vm}/snapshots", on("vm.snapshot", "vm", "vm"),
        "Take a snapshot of a VM", long=True),
    _op("snapshots.restore", "POST", "/vms/{vm}/snapshots/{snapshot_id}/restore",
        on("vm.snapshot", "vm", "vm"), "Revert a stopped VM to a snapshot", long=True),
    _op("vm_devices.nic", "PUT", "/vms/{vm}/nics/{name}", on("vm.edit", "vm", "vm"),
        "Add, change or remove a VM's NIC"),
    _op("vm_devices.disk", "PUT", "/vms/{vm}/disks/{name}", on("vm.edit", "vm", "vm"),
        "Add, change or remove a VM's disk", long=True),
    _op("backups.info", "GET", "/vms/{vm_name}/backups", on("read", "vm", "vm_name"),
        "A VM's backups (restore points)", returns="value"),
    _op("backups.create", "POST", "/vms/{vm_name}/backups", on("vm.backup", "vm", "vm_name"),
        "Back a VM up (incremental when it can be)", long=True),
    _op("backups.remove", "DELETE", "/backups/{backup_id}", _on_backup,
        "Remove a backup, keeping later restore points exact", long=True),
    _op("backups.restore", "POST", "/backups/{backup_id}/restore", _on_backup,
        "Restore a backup into a new VM or a new floating disk", long=True),
    _op("snapshot_merge.delete", "DELETE", "/vms/{vm_name}/snapshots/{snapshot_id}",
        on("vm.snapshot", "vm", "vm_name"), "Delete a VM's snapshot (merge its volumes: live "
        "when the VM runs)", returns="value", long=True),
    # cluster-scoped objects
    _op("networks.info", "GET", "/clusters/{cluster}/networks", on("read", "cluster", "cluster"),
        "List a cluster's networks", returns="page"),
    _op("networks.ensure", "PUT", "/clusters/{cluster}/networks/{name}",
        on("cluster.edit", "cluster", "cluster"), "Create or change a network"),
    _op("networks.remove", "DELETE", "/clusters/{cluster}/networks/{name}",
        on("cluster.edit", "cluster", "cluster"), "Remove a network"),
    _op("affinity_groups.info", "GET", "/clusters/{cluster}/affinity_groups",
        on("read", "cluster", "cluster"), "List a cluster's affinity groups", returns="page"),
    _op("affinity_groups.ensure", "PUT", "/clusters/{cluster}/affinity_groups/{name}",
        on("cluster.edit", "cluster", "cluster"), "Create or change an affinity group"),
    _op("affinity_groups.remove", "DELETE", "/clusters/{cluster}/affinity_groups/{name}",
        on("cluster.edit", "cluster", "cluster"), "Remove an affinity group"),
    # storage
    _op("storage_domains.info", "GET", "/storage_domains", _READ, "List storage domains",
        returns="page"),
    _op("storage_domains.ensure", "PUT", "/storage_domains/{name}", _STORAGE,
        "Create or change a storage domain"),
    _op("storage_domains.remove", "DELETE", "/storage_domains/{name}", _STORAGE,
        "Remove a storage domain"),
    _op("luns.info", "GET", "/luns", _READ, "List LUNs", returns="page"),
    # ``path`` here is the LUN's device path on the hosts, not a file of the caller.
    _op("luns.register", "PUT", "/luns/{name}", _STORAGE, "Register a LUN"),
    _op("luns.remove", "DELETE", "/luns/{name}", _STORAGE, "Forget a LUN"),
    # events, templates, disks
    _op("events.info", "GET", "/events", _events, "The audit log, newest first",
        returns="page"),
    _op("templates.info", "GET", "/templates", _FILTERED, "List templates", returns="page",
        visible="template"),
    _op("templates.ensure", "PUT", "/templates/{name}", _template_ensure,
        "Create, version or remove a template", long=True),
    _op("images.list", "GET", "/disks", _READ, "List floating disks", returns="page"),
    _op("images.floating", "GET", "/disks/{name}", _READ, "Show a floating disk",
        returns="value"),
    _op("images.remove", "DELETE", "/disks/{name}", on_system("disk.delete"),
        "Remove a floating disk"),
    _op("images.upload", "PUT", "/disks/{name}/content", on_system("disk.create"),
        "Upload a floating disk", long=True, stream="upload",
        exclude=frozenset({"progress", "upload_image_path"})),
    _op("images.upload_vm_disk", "PUT", "/vms/{vm}/disks/{name}/content",
        on("vm.disk_transfer", "vm", "vm"), "Upload a VM's disk", long=True, stream="upload",
        exclude=frozenset({"progress", "upload_image_path"})),
    _op("images.download", "GET", "/disks/{name}/content", on_system("disk.download"),
        "Download a floating disk", returns="value", long=True, stream="download",
        exclude=frozenset({"progress", "path"})),
    _op("images.download_vm_disk", "GET", "/vms/{vm}/disks/{name}/content",
        on("vm.disk_transfer", "vm", "vm"), "Download a VM's disk", returns="value", long=True,
        stream="download", exclude=frozenset({"progress", "path"})),
    # access
    _op("users.info", "GET", "/users", _ACCESS, "List users", returns="page"),
    _op("users.ensure", "PUT", "/users/{name}", _ACCESS, "Create or change a user"),
    _op("users.remove", "DELETE", "/users/{name}", _ACCESS, "Remove a user"),
    _op("groups.info", "GET", "/groups", _ACCESS, "List groups", returns="page"),
    _op("groups.ensure", "PUT", "/groups/{name}", _ACCESS, "Create or change a group"),
    _op("groups.remove", "DELETE", "/groups/{name}", _ACCESS, "Remove a group"),
    _op("permissions.info", "GET", "/permissions", _ACCESS, "List permissions",
        returns="page"),
    _op("permissions.ensure", "PUT", "/permissions", _ACCESS, "Grant or revoke a role"),
    # Own tokens for anyone; the service checks access.manage for someone else's.
    _op("tokens.info", "GET", "/tokens", authenticated, "List API tokens", returns="page"),
    _op("tokens.create", "POST", "/tokens", authenticated, "Create an API token"),
    _op("tokens.revoke", "DELETE", "/tokens/{name}", authenticated, "Revoke an API token"),
)

BY_ID = {operation.id: operation for operation in CATALOG}
