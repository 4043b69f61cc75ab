"""Turn a validated VM spec into the VM entity and its devices.

Devices are matched to the spec by name, so their ids (the ``ua-`` aliases)
and MAC addresses survive every re-run; only a device the spec adds gets a
new id, and only a NIC without a MAC draws one from the cluster's pool.

Where ids, MACs and the cluster come from is a ``Context``: the database
(``DbContext``: random UUIDs, the cluster's MAC pool minus what any VM uses),
or nothing at all (``OfflineContext``, for ``kestrel xml render`` of a spec
file: ids are UUIDv5 of the VM and device names, so the same file renders to
the same bytes every time).
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from engine_lib import macpool
from engine_lib import spec as specs
from engine_lib.model import Cluster, DeviceType, Vm, VmDevice, Volume, new_id
from engine_lib.protocol.devices import GUEST_AGENT_CHANNEL
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.protocol.statuses import VmStatus
from engine_lib.services import luns, volumes
from engine_lib.services.common import attached_names, get_cluster
from engine_lib.store import lock_mac_addresses

# Order of devices of one type in the domain XML (and so in the guest's PCI slots).
_TYPE_RANK = {DeviceType.CONTROLLER: 0, DeviceType.DISK: 1, DeviceType.INTERFACE: 2,
              DeviceType.SERIAL: 3, DeviceType.BALLOON: 4, DeviceType.CDROM: 5,
              DeviceType.GRAPHICS: 6, DeviceType.VIDEO: 7, DeviceType.CHANNEL: 8,
              DeviceType.RNG: 9, DeviceType.WATCHDOG: 10, DeviceType.TPM: 11}
# Normalized spec key -> Vm column, for settings that are plain values.
_SCALARS = ("description", "memory_mib", "max_memory_mib", "machine", "kernel", "initrd",
            "cmdline", "custom_properties", "launch_paused", "cloud_init", "high_availability",
            "placement", "tags")
NEW_VM_DEFAULTS = {"memory_mib": 1024, "machine": "q35", "serial_console": True,
                   "cpu": {"sockets": 1, "cores": 1, "threads": 1, "mode": None, "model": "",
                           "max_vcpus": 0},
                   "balloon": {"enabled": True, "guarantee_mib": 0}, "tags": []}
PAYLOAD_CDROM = "payload"
USER_CDROM = "cdrom"
OFFLINE_NAMESPACE = uuid.UUID("6b657374-7265-4c2e-9669-72742f786d6c")


class Context(Protocol):
    """Where a VM's cluster, new ids and the MACs already taken come from."""

    def cluster(self, name: str) -> Cluster: ...

    def new_id(self, key: str) -> str: ...

    def taken_macs(self, vm: Vm) -> dict[str, str]:
        """MACs other VMs hold, MAC -> VM name (MACs are unique engine-wide)."""
        ...

    def storage_domains(self, cluster: Cluster) -> set[str]: ...

    def lun(self, ref: str) -> tuple[str, str] | None: ...

    def new_volume(self, field: str, spec: dict, parent_id: str | None) -> None:
        """Register a new disk's volume (an overlay on ``parent_id`` when given)."""
        ...

    def attach_volume(self, field: str, spec: dict) -> None:
        """A new disk takes the existing volume its spec names (it must be free)."""
        ...

    def iso_volume(self, name: str) -> dict | None: ...


class DbContext:
    def __init__(self, session: Session):
        self.session = session

    def cluster(self, name: str) -> Cluster:
        return get_cluster(self.session, name)

    def new_id(self, key: str) -> str:
        return new_id()

    def taken_macs(self, vm: Vm) -> dict[str, str]:
        """MAC -> owning VM name, for every NIC of the engine except this VM's; no other
        transaction takes a MAC until this one ends."""
        with self.session.no_autoflush:
            lock_mac_addresses(self.session)
            rows = self.session.execute(
                select(VmDevice.mac, Vm.name).join(Vm)
                .where(VmDevice.mac.is_not(None), Vm.id != vm.id))
            return {mac: owner for mac, owner in rows}

    def storage_domains(self, cluster: Cluster) -> set[str]:
        with self.session.no_autoflush:
            return attached_names(self.session, cluster)

    def lun(self, ref: str) -> tuple[str, str] | None:
        """(name, device path) of the registered LUN named ``ref`` (name or WWID)."""
        with self.session.no_autoflush:
            found = luns.lookup(self.session, ref)
        return (found.name, found.path) if found else None

    def new_volume(self, field: str, spec: dict, parent_id: str | None) -> None:
        parent = None
        if parent_id is not None:
            with self.session.no_autoflush:
                parent = self.session.get(Volume, parent_id)
            if parent is None:
                raise InvalidSpec(field, f"backing volume {parent_id} is not registered")
        volumes.new_disk_volume(self.session, spec, parent)

    def attach_volume(self, field: str, spec: dict) -> None:
        volumes.attach(self.session, spec, field)

    def iso_volume(self, name: str) -> dict | None:
        """The ISO disk named ``name``: its volume's place, for a cdrom."""
        with self.session.no_autoflush:
            found = self.session.scalars(select(Volume).where(
                Volume.name == name, Volume.content_type == "iso", Volume.status == "ok",
                Volume.template_id.is_(None))).first()
        return iso_place(found) if found else None


def iso_place(volume: Volume) -> dict:
    return {"storage_domain": volume.storage_domain, "image_id": volume.image_id,
            "volume_id": volume.id, "size_mib": max(1, volume.size_mib)}


class OfflineContext:
    """No database: deterministic ids, the default MAC pool, a cluster of the given virt_type."""

    def __init__(self, vm_name: str, virt_type: str = "kvm"):
        self.vm_name, self.virt_type = vm_name, virt_type

    def cluster(self, name: str) -> Cluster:
        return Cluster(id=self.new_id(f"cluster/{name}"), name=name, description="",
                       virt_type=self.virt_type, memory_overcommit_percent=100,
                       mac_pool=list(macpool.DEFAULT_RANGES))

    def new_id(self, key: str) -> str:
        return str(uuid.uuid5(OFFLINE_NAMESPACE, f"{self.vm_name}/{key}"))

    def taken_macs(self, vm: Vm) -> dict[str, str]:
        return {}

    def storage_domains(self, cluster: Cluster) -> set[str]:
        return set()

    def iso_volume(self, name: str) -> dict | None:
        # No volumes offline: a preview shows the ISO disk as a volume on domain 'iso'.
        return {"storage_domain": "iso", "image_id": self.new_id(f"iso/{name}/image"),
                "volume_id": self.new_id(f"iso/{name}"), "size_mib": 1}

    def lun(self, ref: str) -> tuple[str, str] | None:
        # No registry offline: a preview takes the LUN's udev name under /dev/disk/by-id.
        return ref, f"/dev/disk/by-id/{ref}"

    def new_volume(self, field: str, spec: dict, parent_id: str | None) -> None:
        return None  # nothing is stored offline

    def attach_volume(self, field: str, spec: dict) -> None:
        return None


def create(session: Session | None, spec: dict, ctx: Context | None = None) -> Vm:
    ctx = ctx or DbContext(session)
    if "cluster" not in spec:
        raise InvalidSpec("cluster", "is required when creating a VM")
    vm = Vm(id=ctx.new_id("vm"), name=spec["name"], cluster=ctx.cluster(spec["cluster"]),
            description="", kernel="", initrd="", cmdline="", custom_properties={},
            status=VmStatus.DOWN, exit_reason="", max_memory_mib=0, max_vcpus=0, cpu_mode="",
            cpu_model="", firmware="bios", secure_boot=False, numa_nodes=0, hugepages_kib=0,
            launch_paused=False, cloud_init={}, high_availability={"enabled": False, "priority": 0},
            placement={"hosts": [], "affinity_groups": []}, devices=[])
    if session is not None:
        session.add(vm)
    apply(session, vm, {**NEW_VM_DEFAULTS, **spec}, ctx)
    return vm


def build_offline(spec: dict, virt_type: str = "kvm") -> Vm:
    """A VM entity for a normalized spec, never stored: what ``kestrel xml render`` prints."""
    return create(None, {"cluster": "default", **spec}, OfflineContext(spec["name"], virt_type))


def apply(session: Session | None, vm: Vm, spec: dict, ctx: Context | None = None) -> Vm:
    """Apply the keys ``spec`` gives; keys it omits keep their values."""
    ctx = ctx or DbContext(session)
    if "cluster" in spec and spec["cluster"] != vm.cluster.name:
        if vm.status != VmStatus.DOWN:
            raise Conflict(f"VM '{vm.name}' must be Down to move to cluster '{spec['cluster']}'")
        vm.cluster = ctx.cluster(spec["cluster"])
    for key in _SCALARS:
        if key in spec and getattr(vm, key) != spec[key]:
            setattr(vm, key, spec[key])
    _apply_settings(vm, spec)
    if "disks" in spec:
        _reconcile_disks(vm, ctx, spec["disks"])
    if "nics" in spec:
        _reconcile_nics(vm, ctx, spec["nics"])
    _apply_single_devices(vm, ctx, spec)
    check_vm(vm)
    vm.devices.sort(key=lambda d: d.position)
    return vm


def _set(vm: Vm, **values: Any) -> None:
    """Assign only what changed, so an unchanged VM is not dirtied (its row version stays)."""
    for key, value in values.items():
        if getattr(vm, key) != value:
            setattr(vm, key, value)


def _apply_settings(vm: Vm, spec: dict) -> None:
    if "cpu" in spec:
        cpu = spec["cpu"]
        _set(vm, sockets=cpu["sockets"], cores=cpu["cores"], threads=cpu["threads"],
             cpu_mode=cpu["mode"] or "", cpu_model=cpu["model"], max_vcpus=cpu["max_vcpus"])
    if "firmware" in spec:
        _set(vm, firmware=spec["firmware"]["type"], secure_boot=spec["firmware"]["secure_boot"])
    if "numa" in spec:
        _set(vm, numa_nodes=spec["numa"])
    if "hugepages" in spec:
        _set(vm, hugepages_kib=spec["hugepages"])


def _apply_single_devices(vm: Vm, ctx: Context, spec: dict) -> None:
    """Devices a VM has at most once: present with these settings, or absent (None)."""
    wanted: dict[tuple[str, str | None], dict | None] = {}
    if "cdrom" in spec:
        wanted[DeviceType.CDROM, USER_CDROM] = _cdrom(ctx, spec["cdrom"])
    if "cloud_init" in spec:
        wanted[DeviceType.CDROM, PAYLOAD_CDROM] = {"payload": True} if spec["cloud_init"] else None
    if "serial_console" in spec:
        wanted[DeviceType.SERIAL, None] = {} if spec["serial_console"] else None
    if "guest_agent" in spec:
        wanted[DeviceType.CHANNEL, GUEST_AGENT_CHANNEL] = {} if spec["guest_agent"] else None
    for key, type_ in (("graphics", DeviceType.GRAPHICS), ("video", DeviceType.VIDEO),
                       ("rng", DeviceType.RNG), ("watchdog", DeviceType.WATCHDOG),
                       ("tpm", DeviceType.TPM)):
        if key in spec:
            wanted[type_, None] = spec[key]
    if "balloon" in spec:
        balloon = spec["balloon"]
        wanted[DeviceType.BALLOON, None] = \
            {"guarantee_mib": balloon["guarantee_mib"]} if balloon["enabled"] else None
    graphics = wanted.get((DeviceType.GRAPHICS, None))
    if graphics and "video" not in spec and not vm.devices_of(DeviceType.VIDEO):
        # Without a video device of ours libvirt adds one, and it would carry no ua- alias.
        wanted[DeviceType.VIDEO, None] = {"model": "qxl" if graphics["type"] == "spice"
                                          else "virtio", "heads": 1}
    for (type_, name), settings in wanted.items():
        _ensure_single(vm, ctx, type_, name, settings)
    scsi = any(d.spec["interface"] == "scsi" for d in vm.devices_of(DeviceType.DISK))
    _ensure_single(vm, ctx, DeviceType.CONTROLLER, None, {"model": "virtio-scsi"} if scsi else None)


def _cdrom(ctx: Context, settings: dict | None) -> dict | None:
    """A cdrom naming an ISO disk gets its volume's place (the disk must exist)."""
    iso = (settings or {}).get("iso") or ""
    if not iso or ":" in iso or iso.startswith("/"):
        return settings
    place = ctx.iso_volume(iso)
    if place is None:
        raise InvalidSpec("cdrom.iso", f"no ISO disk named '{iso}' (upload one with "
                                       "content_type iso, or name 'domain:path')")
    return {**(settings or {}), **place}


def _position(type_: str, index: int = 0) -> int:
    return _TYPE_RANK[type_] * 1000 + index


def _ensure_single(vm: Vm, ctx: Context, type_: str, name: str | None,
                   settings: dict | None) -> None:
    existing = [d for d in vm.devices_of(type_) if d.name == name]
    if settings is None:
        for device in existing:
            vm.devices.remove(device)
    elif not existing:
        vm.devices.append(VmDevice(
            id=ctx.new_id(f"{type_}/{name or ''}"), type=type_, name=name,
            position=_position(type_, 1 if name == PAYLOAD_CDROM else 0), spec=dict(settings),
            managed=True, plugged=True, alias="", address={}))
    elif existing[0].spec != settings:
        existing[0].spec = dict(settings)


# Keys of an existing disk that can change; the rest is its data and stays.
_DISK_FIXED = ("storage_domain", "format", "lun")


def _reconcile_disks(vm: Vm, ctx: Context, disks: list[dict]) -> None:
    existing = {d.name: d for d in vm.devices_of(DeviceType.DISK)}
    wanted = {d["name"] for d in disks}
    for name in existing.keys() - wanted:
        # A disk holds data: dropping it from a list must not delete it.
        raise InvalidSpec("disks", f"disk '{name}' is missing from the list; removing a disk "
                                   "from a VM would delete its data, so it is refused here")
    for index, disk in enumerate(disks):
        field = f"disks[{index}]"
        if "lun" in disk:
            disk = {**disk, **_registered_lun(ctx, f"{field}.lun", disk["lun"])}
        device = existing.get(disk["name"])
        if device is None:
            _check_storage_domain(vm, ctx, field, disk)
            spec = dict(disk)
            # Engine-internal: a thin disk from a template names the volume it overlays.
            parent_id = spec.pop("parent_volume_id", None)
            # (The disk module attaches an existing volume by giving its ids.)
            if "lun" in disk:
                pass
            elif "volume_id" in disk:
                ctx.attach_volume("volume", spec)
            else:
                spec.update(image_id=ctx.new_id(f"disk/{disk['name']}/image"),
                            volume_id=ctx.new_id(f"disk/{disk['name']}/volume"))
                ctx.new_volume(f"{field}.parent_volume_id", spec, parent_id)
            # An attached volume exists already: it is never created blank.
            vm.devices.append(VmDevice(
                id=ctx.new_id(f"disk/{disk['name']}"), type=DeviceType.DISK, name=disk["name"],
                position=_position(DeviceType.DISK, index), spec=spec, managed=True,
                plugged=True, alias="", address={}, volume_created="volume_id" in disk))
            continue
        old = device.spec
        for key in _DISK_FIXED:
            if old.get(key) != disk.get(key):
                raise InvalidSpec(f"{field}.{key}", f"cannot change the {key} of existing disk "
                                                    f"'{disk['name']}' (it is {old.get(key)})")
        if old.get("size_mib") != disk.get("size_mib"):
            raise InvalidSpec(f"{field}.size", f"disk '{disk['name']}' is {old['size_mib']} MiB; "
                                               "resizing an existing disk is not supported")
        updated = {**old, **disk}
        if updated != old:
            device.spec = updated
        device.position = _position(DeviceType.DISK, index)


def _registered_lun(ctx: Context, field: str, ref: str) -> dict[str, str]:
    """A disk's LUN, as an administrator registered it (engine_lib.services.luns)."""
    found = ctx.lun(ref)
    if found is None:
        raise InvalidSpec(field, f"'{ref}' is not a registered LUN (an administrator "
                                 "registers LUNs with 'kestrel lun add')")
    return {"lun": found[0], "lun_path": found[1]}


def _check_storage_domain(vm: Vm, ctx: Context, field: str, disk: dict) -> None:
    """Once a cluster has storage domains attached, new disks must use one of them."""
    if "lun" in disk:
        return
    attached = ctx.storage_domains(vm.cluster)
    if attached and disk["storage_domain"] not in attached:
        raise InvalidSpec(f"{field}.storage_domain",
                          f"'{disk['storage_domain']}' is not a storage domain attached to "
                          f"cluster '{vm.cluster.name}' (attached: {', '.join(sorted(attached))})")


def network_bridge(cluster: Cluster, field: str, network: str) -> str | None:
    """The bridge of the cluster's logical network ``network``; None when the cluster
    defines no networks (then the NIC's network is the bridge name itself)."""
    session = object_session(cluster)
    if session is not None:
        # Loading the networks must not flush the VM being built.
        with session.no_autoflush:
            networks = {n.name: n for n in cluster.networks}
    else:
        networks = {n.name: n for n in (cluster.networks or ())}
    if not networks:
        return None
    if network not in networks:
        raise InvalidSpec(field, f"'{network}' is not a network of cluster '{cluster.name}' "
                                 f"(networks: {', '.join(sorted(networks))})")
    return networks[network].bridge


def _reconcile_nics(vm: Vm, ctx: Context, nics: list[dict]) -> None:
    existing = {d.name: d for d in vm.devices_of(DeviceType.INTERFACE)}
    removed = existing.keys() - {n["name"] for n in nics}
    for name in removed:
        vm.devices.remove(existing.pop(name))
    session = object_session(vm)
    if removed and session is not None:
        # A renamed NIC keeps its MAC: the old row must be gone before the new one
        # is inserted (a flush inserts before it deletes), or the unique index refuses.
        session.flush()
    taken: dict[str, str] | None = None
    for index, nic in enumerate(nics):
        device = existing.get(nic["name"])
        mac = nic.get("mac") or (device.spec["mac"] if device else None)
        if mac is None or device is None or mac != device.spec.get("mac"):
            # Only a new or changed MAC is checked (and locked) against the engine's.
            taken = ctx.taken_macs(vm) if taken is None else taken
            if mac in taken:
                raise InvalidSpec(f"nics[{index}].mac",
                                  f"{mac} is already used by VM '{taken[mac]}'")
        if mac is None:
            own = {d.spec["mac"] for d in vm.devices_of(DeviceType.INTERFACE)}
            own |= {n["mac"] for n in nics if n.get("mac")}
            mac = macpool.allocate(vm.cluster.mac_pool, set(taken or ()) | own)
        spec = {**nic, "mac": mac}
        bridge = network_bridge(vm.cluster, f"nics[{index}].network", nic["network"])
        if bridge is not None:
            spec["bridge"] = bridge
        if device is None:
            vm.devices.append(VmDevice(
                id=ctx.new_id(f"interface/{nic['name']}"), type=DeviceType.INTERFACE,
                name=nic["name"], spec=spec, managed=True, plugged=True, alias="", address={}))
            device = vm.devices[-1]
        elif device.spec != spec:
            device.spec = spec
        device.position = _position(DeviceType.INTERFACE, index)


# -- the whole VM, after merging ---------------------------------------------------------------

def check_vm(vm: Vm) -> None:
    """Rules between settings that a partial spec may change one at a time."""
    if vm.initrd and not vm.kernel:
        raise InvalidSpec("initrd", "an initrd needs a kernel")
    if vm.max_memory_mib and vm.max_memory_mib < vm.memory_mib:
        raise InvalidSpec("max_memory", f"{vm.max_memory_mib} MiB is less than memory "
                                        f"({vm.memory_mib} MiB)")
    specs.check_vcpus({"sockets": vm.sockets, "cores": vm.cores, "threads": vm.threads},
                      vm.max_vcpus)
    if vm.secure_boot and vm.machine != "q35":
        raise InvalidSpec("firmware.secure_boot", "needs machine q35 (SMM)")
    if vm.numa_nodes:
        if vm.numa_nodes > max(vm.vcpus, vm.max_vcpus):
            raise InvalidSpec("numa.nodes", f"{vm.numa_nodes} nodes need at least as many vCPUs "
                                            f"(the VM has {max(vm.vcpus, vm.max_vcpus)})")
        if vm.memory_mib % vm.numa_nodes:
            raise InvalidSpec("numa.nodes", f"memory ({vm.memory_mib} MiB) does not split evenly "
                                            f"into {vm.numa_nodes} nodes")
    if vm.hugepages_kib and (vm.memory_mib * 1024) % vm.hugepages_kib:
        raise InvalidSpec("hugepages", f"memory ({vm.memory_mib} MiB) is not a whole number "
                                       f"of {vm.hugepages_kib} KiB pages")
    _check_boot_orders(vm)


def _check_boot_orders(vm: Vm) -> None:
    seen: dict[int, str] = {}
    counters: dict[str, int] = {}
    for device in sorted(vm.devices, key=lambda d: d.position):
        if device.type not in (DeviceType.DISK, DeviceType.INTERFACE, DeviceType.CDROM):
            continue
        index = counters.get(device.type, 0)
        counters[device.type] = index + 1
        order = device.spec.get("boot_order")
        if order is None:
            continue
        field = {DeviceType.DISK: f"disks[{index}]", DeviceType.INTERFACE: f"nics[{index}]"}.get(
            device.type, "cdrom")
        if order in seen:
            raise InvalidSpec(f"{field}.boot_order",
                              f"boot order {order} is already used by {seen[order]}")
        seen[order] = field
