"""The built-in roles and the permissions (oVirt's action groups) each one grants.

A role is granted to a user or a group on an object (engine_lib.model.Permission) and
holds below it: on the system it covers everything, on a cluster that cluster and its
hosts, VMs, templates, networks and affinity groups, on a VM that VM alone. Objects with
no cluster (storage domains, LUNs, floating disks, users) are the system's.
"""

from __future__ import annotations

# What each permission lets its holder do to the objects it covers.
PERMISSIONS: dict[str, str] = {
    "read": "see the object and its events",
    "cluster.create": "create clusters",
    "cluster.edit": "change a cluster, its networks and affinity groups",
    "cluster.delete": "remove clusters",
    "host.create": "add hosts",
    "host.edit": "change a host and reinstall it",
    "host.delete": "remove hosts",
    "host.maintenance": "move a host to maintenance and activate it",
    "vm.create": "create VMs",
    "vm.edit": "change a VM's configuration, disks and NICs",
    "vm.delete": "remove VMs",
    "vm.power": "start, stop, suspend and reboot VMs",
    "vm.migrate": "migrate VMs and cancel their migrations",
    "vm.console": "read a VM's console and domain XML",
    "vm.disk_transfer": "upload and download a VM's disks",
    "vm.snapshot": "take, revert and remove snapshots",
    "vm.backup": "back VMs up and restore them",
    "template.create": "make templates from VMs",
    "template.edit": "change and version templates",
    "template.delete": "remove templates",
    "disk.create": "upload and create floating disks and ISOs",
    "disk.delete": "remove floating disks and ISOs",
    "disk.download": "download floating disks and ISOs",
    "storage.manage": "add, change and remove storage domains and LUNs",
    "access.manage": "manage users, groups, permissions and other users' tokens",
    "job.view_all": "see and cancel every user's jobs",
}

_VM_USER = {"read", "vm.power", "vm.console"}
_VM_MANAGER = _VM_USER | {"vm.edit", "vm.delete", "vm.disk_transfer", "vm.snapshot",
                          "vm.backup"}
_CLUSTER = (_VM_MANAGER | {"vm.create", "vm.migrate", "cluster.edit", "cluster.delete",
                           "host.create", "host.edit", "host.delete", "host.maintenance",
                           "template.create", "template.edit", "template.delete"})

ROLES: dict[str, frozenset[str]] = {
    "SuperUser": frozenset(PERMISSIONS),
    # Everything inside its clusters; on the system also creating clusters and disks.
    "ClusterAdmin": frozenset(_CLUSTER | {"cluster.create", "disk.create", "disk.delete",
                                          "disk.download"}),
    "HostAdmin": frozenset({"read", "host.create", "host.edit", "host.delete",
                            "host.maintenance"}),
    "VmOperator": frozenset(_VM_USER),
    # Creating VMs; the creator is granted UserVmManager on each VM it creates.
    "VmCreator": frozenset({"read", "vm.create"}),
    # oVirt's owner role: what the creator of a VM may do to that VM.
    "UserVmManager": frozenset(_VM_MANAGER),
    "ReadOnly": frozenset({"read"}),
}

# The objects a role can be granted on, the system covering all.
OBJECT_TYPES = ("system", "cluster", "host", "vm", "template")
