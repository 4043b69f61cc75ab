"""A VM's row as users see it (``vm_dict``), its guest agent's report included.

Low in the services layer: the VM service, hibernation and the engine loop all
hand out VMs in this shape.
"""

from __future__ import annotations

from sqlalchemy.orm import selectinload

from engine_lib.model import DeviceType, Vm
from engine_lib.protocol.statuses import VmStatus

# What vm_dict shows of a guest agent's report: the inventory reads "ips" (ansible_host).
_GUEST_KEYS = ("ips", "hostname", "os", "users", "filesystems", "interfaces", "timezone")
_NO_GUEST = {"ips": [], "hostname": "", "os": {}, "users": [], "filesystems": [],
             "interfaces": []}


# What vm_dict reads beyond the VM's row, loaded for a whole list in one query each.
VM_DICT_LOADS = (selectinload(Vm.cluster), selectinload(Vm.run_on_host),
                 selectinload(Vm.template), selectinload(Vm.devices),
                 selectinload(Vm.snapshots))


def guest_dict(vm: Vm) -> dict:
    """vm_dict's "guest": the latest report while the VM runs, else empty fields."""
    info = vm.guest_info or {}
    if vm.status not in VmStatus.ACTIVE or not info:
        return {**_NO_GUEST}
    return {**_NO_GUEST, **{key: info[key] for key in _GUEST_KEYS if key in info}}


def vm_dict(vm: Vm) -> dict:
    return {
        "id": vm.id,
        "name": vm.name,
        "cluster": vm.cluster.name,
        "description": vm.description,
        "status": vm.status,
        "exit_reason": vm.exit_reason,
        "host": vm.run_on_host.name if vm.run_on_host else None,
        "memory_mib": vm.memory_mib,
        "vcpus": vm.vcpus,
        "cpu": {"sockets": vm.sockets, "cores": vm.cores, "threads": vm.threads},
        "machine": vm.machine,
        "kernel": vm.kernel,
        "initrd": vm.initrd,
        "cmdline": vm.cmdline,
        "custom_properties": dict(vm.custom_properties),
        "tags": list(vm.tags or []),
        "disks": [{"name": d.name, "id": d.id, "alias": d.user_alias, **d.spec}
                  for d in vm.devices_of(DeviceType.DISK)],
        "nics": [{"name": d.name, "id": d.id, "alias": d.user_alias, **d.spec}
                 for d in vm.devices_of(DeviceType.INTERFACE)],
        # "alias" is what libvirt reports (libvirt's own for devices it added), ours until then.
        "devices": [{"id": d.id, "type": d.type, "name": d.name,
                     "alias": d.alias or (d.user_alias if d.managed else ""),
                     "managed": d.managed, "plugged": d.plugged, "address": dict(d.address),
                     "guest_name": d.guest_name}
                    for d in vm.devices],
        "guest": guest_dict(vm),
        "memory_volume": dict(vm.memory_volume) if vm.memory_volume else None,
        # Its snapshots, oldest first (services.snapshots has the whole of each).
        "snapshots": [{"id": s.id, "description": s.description, "status": s.status,
                       "use_memory": s.use_memory, "created_at": s.created_at.isoformat()}
                      for s in vm.snapshots],
        # The template version the VM was made from, if any.
        "template": ({"name": vm.template.name, "version": vm.template.version_number}
                     if vm.template is not None else None),
    }
