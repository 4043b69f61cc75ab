"""One disk or one NIC of a VM at a time: what the ``disk`` and ``nic`` modules call.

The VM spec (``services.vm_config``) manages devices as whole lists and refuses
what would lose data; this service changes one device and says what happened
to the running domain:

- a NIC added to or removed from a running VM is hot(un)plugged through the
  VM's host agent; a NIC's MAC comes from the cluster pool once and is kept;
- a disk is created (new volume), attached (an existing volume, by image and
  volume id), detached (the device goes, the volume stays, and the result says
  which volume it was), removed (device and volume) or grown;
- a change the running domain cannot take live (a NIC's or disk's settings)
  is stored and reported as ``next_run``: the domain XML diff shows what
  the next start brings.

Growing a disk is done by an agent before the database records it: the VM's
host grows it live (libvirt blockResize) when the VM runs, any Up host of the
cluster grows the file (``qemu-img resize``) when it does not; a volume not
created yet is simply created at the new size at the next start. Shrinking is
refused. For hotplug the DB change commits first and the plug follows; if the
agent refuses, the DB change is undone and the error raised.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict

from sqlalchemy import select

from engine_lib import spec as specs
from engine_lib.domxml import render, render_redacted
from engine_lib.domxml.viewmodel import backing_refs, volume_ref
from engine_lib.model import DeviceType, Host, Vm, VmDevice, Volume
from engine_lib.protocol.devices import find_by_alias
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.services import vm_config, volumes
from engine_lib.services.common import audit, get_vm, retry_on_conflict
from engine_lib.services.host_records import HostRef
from engine_lib.services.results import Outcome
from engine_lib.units import size_mib

NIC_STATES = ("present", "absent")
DISK_STATES = ("present", "detached", "absent")
# Keys of a stored device spec the engine derives, never the user.
_NIC_DERIVED = ("bridge",)
_DISK_IDS = ("image_id", "volume_id")
# Keys of a stored disk spec the engine derives: its backing chain (services.volumes).
_DISK_DERIVED = ("chain",)


def _device(vm: Vm, type_: str, name: str) -> VmDevice | None:
    return next((d for d in vm.devices_of(type_) if d.name == name), None)


def _running_on(vm: Vm) -> HostRef | None:
    """The host the VM runs on, or None when its domain is not running anywhere."""
    if vm.status in VmStatus.ACTIVE and vm.run_on_host is not None:
        return HostRef.of(vm.run_on_host)
    return None


def device_dict(vm: Vm, device: VmDevice) -> dict:
    return {"vm": vm.name, "name": device.name, "id": device.id, "alias": device.user_alias,
            **{k: v for k, v in device.spec.items()
               if k not in _NIC_DERIVED + _DISK_DERIVED}}


def device_xml(vm: Vm, device: VmDevice) -> str:
    """The device element exactly as the domain XML renders it (for hotplug)."""
    found = find_by_alias(render(vm), device.user_alias)
    if found is None:  # every managed disk and NIC renders with its alias
        raise KestrelError(f"device {device.user_alias} of VM '{vm.name}' did not render")
    return ET.tostring(found, encoding="unicode")


class VmDeviceService:
    def __init__(self, engine):
        self.engine = engine

    # -- NICs --------------------------------------------------------------------------------

    @retry_on_conflict
    def nic(self, vm: str, name: str, *, state: str = "present", settings: dict | None = None,
            check_mode: bool = False) -> Outcome:
        """Add, update or remove one NIC. ``settings`` are spec keys (network, mac, model,
        mtu, vlan, link_state, bandwidth, boot_order); keys left out keep their value."""
        specs.choice("state", state, NIC_STATES)
        settings = dict(settings or {})
        if "name" in settings:
            raise InvalidSpec("name", "give the NIC's name as the name option, not a setting")
        with self.engine.store.transaction(commit=False) as session:
            row = get_vm(session, vm)
            before_xml = render_redacted(row)  # diffs show no secrets
            device = _device(row, DeviceType.INTERFACE, name)
            if state == "absent":
                if device is None:
                    return Outcome(False, None, {"before": before_xml, "after": before_xml})
                current = [self._nic_spec(d) for d in row.devices_of(DeviceType.INTERFACE)
                           if d.name != name]
            else:
                # The stored form back in the user's terms (0 there means "not set").
                old = {k: v for k, v in self._nic_spec(device).items()
                       if not (k in ("mtu", "vlan") and not v)} if device else {}
                if device is None and "network" not in settings:
                    raise InvalidSpec("network", "is required to add a NIC")
                merged = specs.nic("nic", {**old, **settings, "name": name})
                if "mac" not in settings and "mac" in old:
                    merged["mac"] = old["mac"]  # a MAC once drawn is kept
                current = [merged if d.name == name else self._nic_spec(d)
                           for d in row.devices_of(DeviceType.INTERFACE)]
                if device is None:
                    current.append(merged)
        return self._change(vm, DeviceType.INTERFACE, name, {"nics": current}, state, check_mode)

    @staticmethod
    def _nic_spec(device: VmDevice) -> dict:
        return {k: v for k, v in device.spec.items() if k not in _NIC_DERIVED} | \
            {"name": device.name}

    # -- disks -------------------------------------------------------------------------------

    @retry_on_conflict
    def disk(self, vm: str, name: str, *, state: str = "present", settings: dict | None = None,
             volume: dict | None = None, check_mode: bool = False) -> Outcome:
        """Create, attach (``volume``: {image_id, volume_id}), grow, detach or remove one disk.

        ``settings`` are disk spec keys (size, storage_domain, format, interface, ...).
        """
        specs.choice("state", state, DISK_STATES)
        settings = dict(settings or {})
        with self.engine.store.transaction(commit=False) as session:
            row = get_vm(session, vm)
            device = _device(row, DeviceType.DISK, name)
            if state != "present":
                if volume is not None:
                    raise InvalidSpec("volume", f"applies to state present only (state is {state})")
                if device is None:
                    xml = render(row)
                    return Outcome(False, None, {"before": xml, "after": xml})
                if state == "absent" and _running_on(row) is None and \
                        "lun" not in device.spec and not self._helper(session, row):
                    raise Conflict(f"cannot delete the volume of disk '{name}': no host of "
                                   f"cluster '{row.cluster.name}' is Up; nothing was changed")
            elif device is None:
                wanted = specs.disk("disk", {**settings, "name": name})
                if volume is not None:
                    if "lun" in wanted:
                        raise InvalidSpec("volume", "does not apply to a lun disk")
                    wanted.update(self._volume_ids(volume))
            else:
                if volume is not None and any(device.spec.get(k) != v
                                              for k, v in self._volume_ids(volume).items()):
                    raise InvalidSpec("volume", f"disk '{name}' already exists with another "
                                                "volume; detach it first")
                wanted = None
        if state == "present" and wanted is None:
            return self._update_disk(vm, name, settings, check_mode)
        if state == "present":
            return self._change(vm, DeviceType.DISK, name, {"add_disk": wanted}, state, check_mode)
        return self._change(vm, DeviceType.DISK, name, {}, state, check_mode)

    @staticmethod
    def _volume_ids(volume: dict) -> dict:
        if not isinstance(volume, dict) or set(volume) - set(_DISK_IDS):
            raise InvalidSpec("volume", f"must be a mapping with {' and '.join(_DISK_IDS)}")
        out = {}
        for key in _DISK_IDS:
            value = volume.get(key)
            if not isinstance(value, str) or not specs.NAME_RE.match(value):
                raise InvalidSpec(f"volume.{key}", f"must be the id of an existing volume "
                                                   f"(got {value!r})")
            out[key] = value
        return out

    def _update_disk(self, vm: str, name: str, settings: dict, check_mode: bool) -> Outcome:
        """Settings of an existing disk; a size can only grow, and only while the VM is Down
        or at its next start."""
        with self.engine.store.transaction(commit=not check_mode) as session:
            row = get_vm(session, vm)
            device = _device(row, DeviceType.DISK, name)
            before_xml, before = render_redacted(row), device_dict(row, device)
            spec = dict(device.spec)
            if "size" in settings:
                new = size_mib("size", settings.pop("size"))
                if "lun" in spec:
                    raise InvalidSpec("size", f"disk '{name}' is a LUN; its size is the device's")
                if new < spec["size_mib"]:
                    raise InvalidSpec("size", f"disk '{name}' is {spec['size_mib']} MiB; "
                                              f"shrinking to {new} MiB would lose data")
                spec["size_mib"] = new
            user = {k: v for k, v in spec.items()
                    if k not in _DISK_IDS + _DISK_DERIVED + ("size_mib", "lun_path")}
            if "lun" not in spec:
                user["size"] = f"{spec['size_mib']}MiB"
            else:
                user.pop("format", None)  # a LUN's is the device's, never given
            wanted = specs.disk("disk", {**user, **settings, "name": name})
            for key in ("storage_domain", "format", "lun"):
                if wanted.get(key) != spec.get(key):
                    raise InvalidSpec(key, f"cannot change the {key} of existing disk '{name}' "
                                           f"(it is {spec.get(key)})")
            spec.update({k: v for k, v in wanted.items() if k != "name"})
            grown = "lun" not in spec and spec["size_mib"] > device.spec["size_mib"]
            if spec != device.spec:
                device.spec = spec
                volume_row = volumes.volume_of(session, device)
                if grown and volume_row is not None:
                    volume_row.size_mib = spec["size_mib"]
                vm_config.check_vm(row)
                session.flush()
                audit(session, "vm", vm, f"disk {name} updated"
                      + (f": grown to {spec['size_mib']} MiB" if grown else ""))
            after_xml, after = render_redacted(row), device_dict(row, device)
            host = _running_on(row)
            if grown:
                # The volume grows now (live when the VM runs), before the DB says so.
                host = host or self._helper(session, row)
                if host is None:
                    raise Conflict(f"cannot grow disk '{name}': VM '{vm}' is not running and no "
                                   f"host of cluster '{row.cluster.name}' is Up; nothing was "
                                   "changed")
                if not check_mode:
                    self.engine.agent(host.address, host.port).resize_volume(
                        asdict(volume_ref(device)))
            # The size is not in the domain XML, so a grow alone needs no restart.
            entity = {**after, "hotplugged": grown,
                      "next_run": before_xml != after_xml and _running_on(row) is not None}
        return Outcome(before != after, entity, {"before": before_xml, "after": after_xml})

    def _helper(self, session, vm: Vm) -> HostRef | None:
        return HostRef.of(session.scalars(select(Host).where(
            Host.cluster_id == vm.cluster_id, Host.status == HostStatus.UP)
            .order_by(Host.name)).first())

    # -- the change itself -------------------------------------------------------------------

    def _change(self, vm: str, type_: str, name: str, change: dict, state: str,
                check_mode: bool) -> Outcome:
        """Apply ``change`` in the DB, then bring the running domain along."""
        with self.engine.store.transaction(commit=not check_mode) as session:
            row = get_vm(session, vm)
            host, vm_id = _running_on(row), row.id
            before_xml = render_redacted(row)
            device = _device(row, type_, name)
            old_spec = dict(device.spec) if device else None
            alias = device.user_alias if device else None
            volume = None
            if type_ == DeviceType.INTERFACE:
                vm_config.apply(session, row, change)
            elif state == "present":
                vm_config.apply(session, row, {"disks": [
                    {**d.spec, "name": d.name} for d in row.devices_of(DeviceType.DISK)]
                    + [change["add_disk"]]})
            else:
                if "lun" not in device.spec:
                    volume = asdict(volume_ref(device))
                    self._release_volume(session, device, state)
                row.devices.remove(device)
                vm_config.apply(session, row, {})
            session.flush()
            after_xml = render_redacted(row)
            device = _device(row, type_, name)
            entity = device_dict(row, device) if device else None
            old = None if old_spec is None else {k: v for k, v in old_spec.items()
                                                 if k not in _NIC_DERIVED}
            new = None if device is None else {k: v for k, v in device.spec.items()
                                               if k not in _NIC_DERIVED}
            changed = old != new
            plug = host is not None and old_spec is None and device is not None
            unplug = host is not None and old_spec is not None and device is None
            plug_xml = device_xml(row, device) if plug else None
            plug_volume = asdict(volume_ref(device)) if plug and type_ == DeviceType.DISK \
                and "lun" not in device.spec else None
            plug_luns = {device.spec["lun"]: device.spec["lun_path"]} \
                if plug and "lun" in device.spec else None
            plug_chain = [asdict(ref) for ref in backing_refs(device)] if plug_volume else []
            if changed:
                audit(session, "vm", vm, f"{'NIC' if type_ == DeviceType.INTERFACE else 'disk'} "
                      f"{name} "
                      f"{'removed' if device is None else 'added' if old is None else 'updated'}"
                      f"{' (detached, volume kept)' if state == 'detached' else ''}")
            if unplug and not check_mode:
                # The guest releases the device before the DB forgets it.
                self.engine.agent(host.address, host.port).unplug_device(vm_id, alias)
        hotplugged = plug or unplug
        if plug and not check_mode:
            try:
                agent = self.engine.agent(host.address, host.port)
                if plug_chain:  # the volumes under a thin disk, checked and never created
                    agent.plug_device(vm_id, plug_xml, plug_volume, plug_luns, chain=plug_chain)
                else:
                    agent.plug_device(vm_id, plug_xml, plug_volume, plug_luns)
            except KestrelError:
                self._undo_add(vm, type_, name)
                raise
        if state == "absent" and volume is not None and not check_mode:
            self._delete_volume(vm, volume)
        if entity is None:
            entity = {"vm": vm, "name": name}
            if state == "detached" and volume is not None:
                # Where the data stays: attach it again with the disk module's volume option.
                entity.update(storage_domain=volume["domain"], image_id=volume["image"],
                              volume_id=volume["volume"], size_mib=volume["size_mib"],
                              format=volume["format"])
        entity.update(hotplugged=changed and hotplugged,
                      next_run=changed and host is not None and not hotplugged
                      and before_xml != after_xml)
        return Outcome(changed, entity, {"before": before_xml, "after": after_xml})

    def _undo_add(self, vm: str, type_: str, name: str) -> None:
        with self.engine.store.transaction() as session:
            row = get_vm(session, vm)
            device = _device(row, type_, name)
            if device is not None:
                row.devices.remove(device)
                vm_config.apply(session, row, {})
                audit(session, "vm", vm, f"hotplug of {name} failed; the device was not added",
                      "error")

    @staticmethod
    def _release_volume(session, device: VmDevice, state: str) -> None:
        """The disk goes: its volume row becomes a floating disk of the same name
        (detached), or must have no dependents before its file is deleted (absent)."""
        row = volumes.volume_of(session, device)
        if row is None:
            return
        if state == "detached":
            row.name = device.name or ""
            return
        dependents = volumes.children(session, [row.id])
        if dependents:
            raise Conflict(f"cannot delete the volume of disk '{device.name}': "
                           + ", ".join(f"{vm} disk {disk}" if vm else f"floating disk {disk}"
                                       for vm, disk in dependents)
                           + " use it as a backing volume; nothing was changed")

    def _delete_volume(self, vm: str, volume: dict) -> None:
        with self.engine.store.transaction(commit=False) as session:
            helper = self._helper(session, get_vm(session, vm))
        if helper is None:
            raise Conflict(f"the disk was removed from VM '{vm}' but its volume "
                           f"{volume['image']}/{volume['volume']} on storage domain "
                           f"'{volume['domain']}' could not be deleted: no host is Up")
        self.engine.agent(helper.address, helper.port).delete_volumes([volume])
        # The file is gone: so is its row (a disk attached it meanwhile keeps it).
        with self.engine.store.transaction() as session:
            row = session.get(Volume, volume["volume"])
            if row is not None and not volumes.users(session, row.id):
                session.delete(row)
