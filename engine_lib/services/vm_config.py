"""Turn a validated VM spec into the VM entity and its devices.

Devices are matched to the spec by name, so their ids (the ``ua-`` aliases)
and MAC addresses survive every re-run; only a device the spec adds gets a
new id, and only a NIC without a MAC draws one from the cluster's pool.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib import macpool
from engine_lib.errors import Conflict, InvalidSpec
from engine_lib.model import DeviceType, Vm, VmDevice, VmStatus, new_id
from engine_lib.services.common import get_cluster

# Order of devices in the domain XML (and so in the guest's PCI slots).
_TYPE_RANK = {DeviceType.CONTROLLER: 0, DeviceType.DISK: 1, DeviceType.INTERFACE: 2,
              DeviceType.SERIAL: 3, DeviceType.BALLOON: 4}
_SCALARS = ("description", "memory_mib", "machine", "kernel", "initrd", "cmdline",
            "custom_properties")
NEW_VM_DEFAULTS = {"memory_mib": 1024, "machine": "q35", "serial_console": True,
                   "cpu": {"sockets": 1, "cores": 1, "threads": 1}}


def create(session: Session, spec: dict) -> Vm:
    if "cluster" not in spec:
        raise InvalidSpec("cluster", "is required when creating a VM")
    vm = Vm(id=new_id(), name=spec["name"], cluster=get_cluster(session, spec["cluster"]), description="",
            kernel="", initrd="", cmdline="", custom_properties={}, status=VmStatus.DOWN,
            exit_reason="")
    session.add(vm)
    apply(session, vm, {**NEW_VM_DEFAULTS, **spec})
    return vm


def apply(session: Session, vm: Vm, spec: dict) -> Vm:
    """Apply the keys ``spec`` gives; keys it omits keep their values."""
    if "cluster" in spec and spec["cluster"] != vm.cluster.name:
        if vm.status != VmStatus.DOWN:
            raise Conflict(f"VM '{vm.name}' must be Down to move to cluster '{spec['cluster']}'")
        vm.cluster = get_cluster(session, spec["cluster"])
    for key in _SCALARS:
        if key in spec and getattr(vm, key) != spec[key]:
            setattr(vm, key, spec[key])
    if "cpu" in spec:
        vm.sockets, vm.cores, vm.threads = (spec["cpu"][k] for k in ("sockets", "cores", "threads"))
    if vm.initrd and not vm.kernel:
        raise InvalidSpec("initrd", "an initrd needs a kernel")
    if "disks" in spec:
        _reconcile_disks(vm, spec["disks"])
    if "nics" in spec:
        _reconcile_nics(session, vm, spec["nics"])
    if "serial_console" in spec:
        _ensure_single(vm, DeviceType.SERIAL, spec["serial_console"])
    _ensure_single(vm, DeviceType.BALLOON, True)
    _ensure_single(vm, DeviceType.CONTROLLER,
                   any(d.spec["interface"] == "scsi" for d in vm.devices_of(DeviceType.DISK)),
                   spec={"model": "virtio-scsi"})
    vm.devices.sort(key=lambda d: d.position)
    return vm


def _position(type_: str, index: int = 0) -> int:
    return _TYPE_RANK[type_] * 1000 + index


def _ensure_single(vm: Vm, type_: str, wanted: bool, spec: dict | None = None) -> None:
    existing = vm.devices_of(type_)
    if wanted and not existing:
        vm.devices.append(VmDevice(id=new_id(), type=type_, position=_position(type_), spec=spec or {},
                                   managed=True, plugged=True, alias="", address={}))
    elif not wanted:
        for device in existing:
            vm.devices.remove(device)


def _reconcile_disks(vm: Vm, disks: list[dict]) -> None:
    existing = {d.name: d for d in vm.devices_of(DeviceType.DISK)}
    wanted = {d["name"] for d in disks}
    for name in existing.keys() - wanted:
        # A disk holds data: dropping it from a list must not delete it.
        raise InvalidSpec("disks", f"disk '{name}' is missing from the list; removing a disk "
                                   "from a VM would delete its data, so it is refused here")
    for index, disk in enumerate(disks):
        field = f"disks[{index}]"
        device = existing.get(disk["name"])
        if device is None:
            vm.devices.append(VmDevice(
                id=new_id(), type=DeviceType.DISK, name=disk["name"], position=_position(DeviceType.DISK, index),
                spec={**disk, "image_id": str(uuid.uuid4()), "volume_id": str(uuid.uuid4())},
                managed=True, plugged=True, alias="", address={}))
            continue
        old = device.spec
        for key in ("storage_domain", "format"):
            if old[key] != disk[key]:
                raise InvalidSpec(f"{field}.{key}", f"cannot change the {key} of existing disk "
                                                    f"'{disk['name']}' (it is {old[key]})")
        if old["size_mib"] != disk["size_mib"]:
            raise InvalidSpec(f"{field}.size", f"disk '{disk['name']}' is {old['size_mib']} MiB; "
                                               "resizing an existing disk is not supported")
        updated = {**old, "interface": disk["interface"], "bootable": disk["bootable"]}
        if updated != old:
            device.spec = updated
        device.position = _position(DeviceType.DISK, index)


def _macs_in_cluster(session: Session, vm: Vm) -> dict[str, str]:
    """MAC -> owning VM name, for every NIC in the VM's cluster except this VM's."""
    rows = session.execute(
        select(VmDevice.spec, Vm.name).join(Vm)
        .where(Vm.cluster_id == vm.cluster.id, VmDevice.type == DeviceType.INTERFACE,
               Vm.id != vm.id))
    return {spec["mac"]: owner for spec, owner in rows}


def _reconcile_nics(session: Session, vm: Vm, nics: list[dict]) -> None:
    existing = {d.name: d for d in vm.devices_of(DeviceType.INTERFACE)}
    for name in existing.keys() - {n["name"] for n in nics}:
        vm.devices.remove(existing.pop(name))
    with session.no_autoflush:
        taken = _macs_in_cluster(session, vm)
    for index, nic in enumerate(nics):
        device = existing.get(nic["name"])
        mac = nic.get("mac") or (device.spec["mac"] if device else None)
        if mac in taken:
            raise InvalidSpec(f"nics[{index}].mac", f"{mac} is already used by VM '{taken[mac]}'")
        if mac is None:
            own = {d.spec["mac"] for d in vm.devices_of(DeviceType.INTERFACE)}
            mac = macpool.allocate(vm.cluster.mac_pool, set(taken) | own)
        spec = {**nic, "mac": mac}
        if device is None:
            vm.devices.append(VmDevice(
                id=new_id(), type=DeviceType.INTERFACE, name=nic["name"], spec=spec, managed=True,
                plugged=True, alias="", address={}))
            device = vm.devices[-1]
        elif device.spec != spec:
            device.spec = spec
        device.position = _position(DeviceType.INTERFACE, index)
