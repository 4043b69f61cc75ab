"""Prepare what the domain template prints, from a VM entity.

Works on ORM instances whether or not they are attached to a session, so the
same code renders stored VMs and specs that were never saved.
"""

from __future__ import annotations

from engine_lib import metadata, placeholders
from engine_lib.model import DeviceType, Vm, VmDevice

_TARGET_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd"}


def target_name(prefix: str, index: int) -> str:
    """vda, vdb, ... vdz, vdaa: the kernel's own naming scheme."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def boot_file_path(value: str) -> str:
    """'images:vmlinuz' -> a storage placeholder; an absolute path stays as given."""
    if not value or value.startswith("/"):
        return value
    domain, _, relpath = value.partition(":")
    return placeholders.storage(domain, relpath)


def volume_ref(device: VmDevice) -> metadata.VolumeRef:
    spec = device.spec
    return metadata.VolumeRef(alias=device.user_alias, domain=spec["storage_domain"],
                              image=spec["image_id"], volume=spec["volume_id"],
                              format=spec["format"], size_mib=spec["size_mib"])


def _disks(vm: Vm) -> list[dict]:
    used: dict[str, int] = {}
    disks = []
    boot_order = 0
    for device in vm.devices_of(DeviceType.DISK):
        spec = device.spec
        prefix = _TARGET_PREFIX[spec["interface"]]
        index = used.get(prefix, 0)
        used[prefix] = index + 1
        ref = volume_ref(device)
        boot = None
        if spec.get("bootable") and not vm.kernel:
            boot_order += 1
            boot = boot_order
        disks.append({
            "alias": device.user_alias,
            "format": spec["format"],
            "path": placeholders.storage(ref.domain, ref.relpath),
            "target": target_name(prefix, index),
            "bus": spec["interface"],
            "boot_order": boot,
            # Guests see the disk id as the serial, so /dev/disk/by-id names it.
            "serial": device.id[:20],
        })
    return disks


def _nics(vm: Vm) -> list[dict]:
    return [{
        "alias": device.user_alias,
        "mac": device.spec["mac"],
        "bridge": device.spec["network"],
        "model": device.spec["model"],
    } for device in vm.devices_of(DeviceType.INTERFACE)]


def _single(vm: Vm, type_: str) -> VmDevice | None:
    found = vm.devices_of(type_)
    return found[0] if found else None


def build(vm: Vm) -> dict:
    serial = _single(vm, DeviceType.SERIAL)
    balloon = _single(vm, DeviceType.BALLOON)
    scsi = _single(vm, DeviceType.CONTROLLER)
    return {
        "id": vm.id,
        "name": vm.name,
        "description": vm.description,
        "virt_type": vm.cluster.virt_type,
        "memory_mib": vm.memory_mib,
        "vcpus": vm.vcpus,
        "topology": {"sockets": vm.sockets, "cores": vm.cores, "threads": vm.threads},
        "machine": vm.machine,
        "kernel": boot_file_path(vm.kernel),
        "initrd": boot_file_path(vm.initrd),
        "cmdline": vm.cmdline,
        "metadata": {
            "namespace": metadata.NAMESPACE,
            "prefix": metadata.PREFIX,
            "cluster": vm.cluster.name,
            "volumes": [volume_ref(d) for d in vm.devices_of(DeviceType.DISK)],
            "custom_properties": sorted(vm.custom_properties.items()),
        },
        "disks": _disks(vm),
        "scsi_controller": {"alias": scsi.user_alias} if scsi else None,
        "nics": _nics(vm),
        "serial": {"alias": serial.user_alias, "log": placeholders.console_log(vm.id)}
        if serial else None,
        "balloon": {"alias": balloon.user_alias} if balloon else None,
    }
