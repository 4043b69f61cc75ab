"""Prepare what the domain template prints, from a VM entity.

Every decision lives here, one small function per section of the domain
(KubeVirt's habit): targets, boot orders, placeholders, defaults that depend
on the cluster. The template only loops and prints. Works on ORM instances
whether or not they are attached to a session, so the same code renders
stored VMs and specs that were never saved.
"""

from __future__ import annotations

import json
from typing import Any

from engine_lib.model import DeviceType, Vm, VmDevice
from engine_lib.protocol import metadata, placeholders

_TARGET_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}
# Memory hotplug: DIMM slots offered when max_memory is set.
MEMORY_SLOTS = 16
# Ballooning clusters: how often the guest's balloon driver reports its memory use (s).
BALLOON_STATS_PERIOD_S = 5
# cpu mode -> the <cpu> attributes libvirt expects with it.
_CPU_CHECK = {"host-model": "partial", "host-passthrough": "none", "custom": "partial"}


def target_name(prefix: str, index: int) -> str:
    """vda, vdb, ... vdz, vdaa: the kernel's own naming scheme."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def boot_file_path(value: str) -> str:
    """'images:vmlinuz' -> a storage placeholder.

    A host path stored before specs refused them stays as it was: the agent refuses
    to start a domain naming one, and the VM can still be shown and corrected.
    """
    if not value or value.startswith("/"):
        return value
    domain, _, relpath = value.partition(":")
    return placeholders.storage(domain, relpath)


def _lun_path(spec: dict[str, Any]) -> str:
    """A registered LUN's placeholder; a device path stored before LUNs were registered
    stays as it was (the agent refuses it, see boot_file_path)."""
    if "lun_path" not in spec:
        lun: str = spec["lun"]
        return lun
    return placeholders.lun(spec["lun"])


def lun_refs(disks: list[VmDevice]) -> list[tuple[str, str]]:
    """(name, device path) of the registered LUNs the disks use: the agent's only source
    for a LUN's path."""
    return sorted({(d.spec["lun"], d.spec["lun_path"]) for d in disks if "lun_path" in d.spec})


def _parent(chain: list[dict[str, Any]], index: int) -> tuple[str, str]:
    """(parent, parent_format) of a chain member's ref: the next volume down, if any."""
    if index >= len(chain):
        return "", ""
    below = chain[index]
    return f"{below['image_id']}/{below['volume_id']}", below["format"]


def volume_ref(device: VmDevice) -> metadata.VolumeRef:
    """The disk's own volume (the top of its chain)."""
    spec = device.spec
    parent, parent_format = _parent(spec.get("chain", []), 0)
    return metadata.VolumeRef(alias=device.user_alias, domain=spec["storage_domain"],
                              image=spec["image_id"], volume=spec["volume_id"],
                              format=spec["format"], size_mib=spec["size_mib"],
                              disk=device.name or "", create=not device.volume_created,
                              parent=parent, parent_format=parent_format)


def backing_refs(device: VmDevice) -> list[metadata.VolumeRef]:
    """The volumes under the disk's own, nearest first: files the disk reads, never
    created or deleted with it (services.volumes keeps ``spec["chain"]`` from the rows)."""
    chain = device.spec.get("chain", [])
    refs = []
    for index, member in enumerate(chain):
        parent, parent_format = _parent(chain, index + 1)
        refs.append(metadata.VolumeRef(
            alias="", domain=device.spec["storage_domain"], image=member["image_id"],
            volume=member["volume_id"], format=member["format"],
            size_mib=member.get("size_mib", 0), disk=device.name or "", parent=parent,
            parent_format=parent_format))
    return refs


def iso_ref(device: VmDevice) -> metadata.VolumeRef:
    """A cdrom's ISO disk: the agent checks it is there and never creates it (the VM's
    own volumes, which a removal deletes, are volume_refs' and never include it)."""
    spec = device.spec
    return metadata.VolumeRef(alias=device.user_alias, domain=spec["storage_domain"],
                              image=spec["image_id"], volume=spec["volume_id"], format="raw",
                              size_mib=spec["size_mib"], disk=f"cdrom ISO '{spec['iso']}'",
                              create=False)


def volume_refs(vm: Vm) -> list[metadata.VolumeRef]:
    """Volumes the agent prepares; a LUN is the host's block device, not a volume of ours."""
    return [volume_ref(d) for d in vm.devices_of(DeviceType.DISK) if "lun" not in d.spec]


def _metadata_volumes(disks: list[VmDevice]) -> list[metadata.VolumeRef]:
    """Each disk's volume, then the backing volumes of all of them (each once)."""
    own = [volume_ref(d) for d in disks if "lun" not in d.spec]
    backing: dict[tuple[str, str], metadata.VolumeRef] = {}
    for disk in disks:
        if "lun" not in disk.spec:
            for ref in backing_refs(disk):
                backing.setdefault((ref.domain, ref.relpath), ref)
    return own + list(backing.values())


class _Targets:
    """Hands out vda, vdb, sda, ... per prefix, in device order."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    def next(self, bus: str) -> str:
        prefix = _TARGET_PREFIX[bus]
        index = self.used.get(prefix, 0)
        self.used[prefix] = index + 1
        return target_name(prefix, index)


class _BootOrders:
    """Explicit orders are kept; bootable devices without one get the lowest free order."""

    def __init__(self, vm: Vm, bootables: list[VmDevice]) -> None:
        self.direct_boot = bool(vm.kernel)
        self.explicit = {d.spec["boot_order"] for d in bootables if d.spec.get("boot_order")}
        self.next_free = 0

    def order(self, spec: dict[str, Any]) -> int | None:
        if self.direct_boot:
            return None
        if spec.get("boot_order"):
            explicit: int = spec["boot_order"]
            return explicit
        if not spec.get("bootable"):
            return None
        self.next_free += 1
        while self.next_free in self.explicit:
            self.next_free += 1
        return self.next_free


def _disk(device: VmDevice, targets: _Targets, boot: _BootOrders) -> dict[str, Any]:
    spec = device.spec
    lun = spec.get("lun")
    return {
        "alias": device.user_alias,
        "type": "block" if lun else "file",
        "source_attr": "dev" if lun else "file",
        "path": _lun_path(spec) if lun else placeholders.storage(
            spec["storage_domain"], f"{spec['image_id']}/{spec['volume_id']}"),
        # Its backing volumes, nearest first, on its domain: rendered as nested
        # <backingStore>, so no host opens a backing file an image header names.
        "chain": [] if lun else [
            {"path": placeholders.storage(spec["storage_domain"],
                                          f"{m['image_id']}/{m['volume_id']}"),
             "format": m["format"]} for m in spec.get("chain", [])],
        "format": spec["format"],
        "cache": None if spec.get("cache", "default") == "default" else spec["cache"],
        "io": None if spec.get("io", "default") == "default" else spec["io"],
        "discard": "unmap" if spec.get("discard") == "unmap" else None,
        "target": targets.next(spec["interface"]),
        "bus": spec["interface"],
        "boot_order": boot.order(spec),
        "readonly": spec.get("readonly", False),
        "shareable": spec.get("shareable", False),
        "iotune": sorted(spec.get("iotune", {}).items()),
        # Guests see the disk id as the serial, so /dev/disk/by-id names it.
        "serial": spec.get("serial") or device.id[:20],
    }


def _cdrom(vm: Vm, device: VmDevice, targets: _Targets, boot: _BootOrders) -> dict[str, Any]:
    spec = device.spec
    bus = "sata" if vm.machine == "q35" else "ide"
    if spec.get("payload"):
        path = placeholders.payload(vm.id)
    elif spec.get("volume_id"):  # an ISO disk: its volume, read-only
        path = placeholders.storage(spec["storage_domain"],
                                    f"{spec['image_id']}/{spec['volume_id']}")
    else:
        path = boot_file_path(spec.get("iso", ""))
    return {"alias": device.user_alias, "path": path, "target": targets.next(bus), "bus": bus,
            "boot_order": boot.order(spec)}


def _nic(device: VmDevice, boot: _BootOrders) -> dict[str, Any]:
    spec = device.spec
    return {
        "alias": device.user_alias,
        "mac": spec["mac"],
        # A cluster's logical network names its bridge; without one the network is the bridge.
        "bridge": spec.get("bridge") or spec["network"],
        "model": spec["model"],
        "mtu": spec.get("mtu") or None,
        # A VLAN tag on the port needs an Open vSwitch bridge (libvirt's rule).
        "vlan": spec.get("vlan") or None,
        "link_down": spec.get("link_state") == "down",
        "bandwidth": [(direction, sorted(rates.items()))
                      for direction, rates in sorted(spec.get("bandwidth", {}).items())],
        "boot_order": boot.order(spec),
    }


def _by_type(vm: Vm) -> dict[str, list[VmDevice]]:
    """Devices grouped by type in one pass (rendering is on the hot path).

    Only the VM's own plugged devices: those libvirt added (unmanaged) it adds
    again by itself, and an unplugged one stays out until it is plugged again.
    ``is not False``: rows not yet flushed have None until their defaults apply.
    """
    groups: dict[str, list[VmDevice]] = {}
    for device in vm.devices:
        if device.managed is not False and device.plugged is not False:
            groups.setdefault(device.type, []).append(device)
    return groups


def _storage_and_network(vm: Vm, groups: dict[str, list[VmDevice]]) -> dict[str, Any]:
    disks = groups.get(DeviceType.DISK, [])
    cdroms = groups.get(DeviceType.CDROM, [])
    nics = groups.get(DeviceType.INTERFACE, [])
    boot = _BootOrders(vm, disks + cdroms + nics)
    targets = _Targets()
    return {
        "disks": [_disk(d, targets, boot) for d in disks],
        "cdroms": [_cdrom(vm, d, targets, boot) for d in cdroms],
        "nics": [_nic(d, boot) for d in nics],
    }


def _numa_cells(vm: Vm) -> list[dict[str, Any]]:
    """vCPUs and memory split evenly; memory hotplug needs at least one cell."""
    nodes = vm.numa_nodes or (1 if vm.max_memory_mib else 0)
    if not nodes:
        return []
    vcpus = max(vm.vcpus, vm.max_vcpus)
    cells, first = [], 0
    for index in range(nodes):
        count = vcpus // nodes + (1 if index < vcpus % nodes else 0)
        last = first + count - 1
        cells.append({"id": index, "cpus": str(first) if count == 1 else f"{first}-{last}",
                      "memory_mib": vm.memory_mib // nodes})
        first = last + 1
    return cells


def _cpu(vm: Vm) -> dict[str, Any]:
    # KVM guests follow the host's CPU; TCG (virt_type qemu) cannot model the host, so its
    # default is libvirt's own (no mode), which the lab's tiny guests boot with.
    mode = vm.cpu_mode or ("host-model" if vm.cluster.virt_type == "kvm" else None)
    sockets = vm.sockets
    if vm.max_vcpus:
        sockets = vm.max_vcpus // (vm.cores * vm.threads)
    return {
        "mode": mode,
        "check": _CPU_CHECK.get(mode or ""),
        "model": vm.cpu_model if mode == "custom" else "",
        "topology": {"sockets": sockets, "cores": vm.cores, "threads": vm.threads},
        "numa": _numa_cells(vm),
    }


def _os(vm: Vm) -> dict[str, Any]:
    efi = vm.firmware == "uefi"
    return {
        "machine": vm.machine,
        "efi": efi,
        "secure_boot": vm.secure_boot,
        "nvram": placeholders.nvram(vm.id) if efi else "",
        "kernel": boot_file_path(vm.kernel),
        "initrd": boot_file_path(vm.initrd),
        "cmdline": vm.cmdline,
    }


def payload_files(vm: Vm) -> list[tuple[str, str]]:
    """The NoCloud files (name, content) the agent writes onto the payload ISO."""
    config = vm.cloud_init
    if not config:
        return []
    meta = {"instance-id": vm.id, "local-hostname": config.get("hostname") or vm.name}
    if config.get("ssh_keys"):
        meta["public-keys"] = list(config["ssh_keys"])
    # JSON is YAML, and cloud-init reads meta-data as YAML.
    files = [("meta-data", json.dumps(meta, sort_keys=True, indent=2) + "\n"),
             ("user-data", config.get("user_data") or "#cloud-config\n{}\n")]
    if config.get("network_config"):
        files.append(("network-config", config["network_config"]))
    return files


def _metadata(vm: Vm, groups: dict[str, list[VmDevice]],
              singles: dict[str, VmDevice | None]) -> dict[str, Any]:
    balloon = singles[DeviceType.BALLOON]
    graphics = singles[DeviceType.GRAPHICS]
    payload = next((d for d in groups.get(DeviceType.CDROM, []) if d.spec.get("payload")), None)
    return {
        "namespace": metadata.NAMESPACE,
        "prefix": metadata.PREFIX,
        "cluster": vm.cluster.name,
        "volumes": _metadata_volumes(groups.get(DeviceType.DISK, []))
        + [iso_ref(d) for d in groups.get(DeviceType.CDROM, []) if d.spec.get("volume_id")],
        "luns": lun_refs(groups.get(DeviceType.DISK, [])),
        # libvirt has no <alias> for graphics: the device id travels here.
        "devices": [{"alias": graphics.user_alias, "type": "graphics"}] if graphics else [],
        "payload": {"alias": payload.user_alias, "files": payload_files(vm)} if payload else None,
        "custom_properties": sorted(vm.custom_properties.items()),
        "launch_paused": vm.launch_paused,
        "balloon_guarantee_mib": balloon.spec.get("guarantee_mib", 0) if balloon else 0,
        # The agent's ballooning policy acts only on VMs flagged here (engine_lib.agent.ballooning).
        "ballooning": _ballooning(vm, balloon),
    }


def _ballooning(vm: Vm, balloon: VmDevice | None) -> bool:
    """Issue 9: the cluster lets its hosts balloon this VM (it must have a balloon)."""
    return balloon is not None and bool(vm.cluster.ballooning)


_SINGLES = (DeviceType.SERIAL, DeviceType.BALLOON, DeviceType.CONTROLLER, DeviceType.GRAPHICS,
            DeviceType.VIDEO, DeviceType.RNG, DeviceType.WATCHDOG, DeviceType.TPM)


def _singles(groups: dict[str, list[VmDevice]]) -> dict[str, VmDevice | None]:
    return {type_: groups[type_][0] if groups.get(type_) else None for type_ in _SINGLES}


def _with_alias(device: VmDevice | None, **extra: Any) -> dict[str, Any] | None:
    return {"alias": device.user_alias, **device.spec, **extra} if device else None


def build(vm: Vm) -> dict[str, Any]:
    groups = _by_type(vm)
    singles = _singles(groups)
    serial = singles[DeviceType.SERIAL]
    graphics = singles[DeviceType.GRAPHICS]
    channels = [{"alias": d.user_alias, "name": d.name,
                 "path": placeholders.channel(vm.id, d.name)}
                for d in groups.get(DeviceType.CHANNEL, [])]
    return {
        "id": vm.id,
        "name": vm.name,
        "description": vm.description,
        "virt_type": vm.cluster.virt_type,
        "memory_mib": vm.memory_mib,
        "max_memory": {"slots": MEMORY_SLOTS, "mib": vm.max_memory_mib}
        if vm.max_memory_mib else None,
        "hugepages_kib": vm.hugepages_kib,
        "vcpus": max(vm.vcpus, vm.max_vcpus),
        "current_vcpus": vm.vcpus if vm.max_vcpus > vm.vcpus else None,
        "cpu": _cpu(vm),
        "os": _os(vm),
        "smm": vm.secure_boot,
        "metadata": _metadata(vm, groups, singles),
        **_storage_and_network(vm, groups),
        "scsi_controller": _with_alias(singles[DeviceType.CONTROLLER]),
        "graphics": graphics.spec if graphics else None,
        "video": _with_alias(singles[DeviceType.VIDEO]),
        "serial": {"alias": serial.user_alias, "log": placeholders.console_log(vm.id)}
        if serial else None,
        "channels": channels,
        "rng": _with_alias(singles[DeviceType.RNG]),
        "watchdog": _with_alias(singles[DeviceType.WATCHDOG]),
        "tpm": _with_alias(singles[DeviceType.TPM]),
        "balloon": _with_alias(singles[DeviceType.BALLOON], stats_period_s=BALLOON_STATS_PERIOD_S
                               if _ballooning(vm, singles[DeviceType.BALLOON]) else None),
    }
