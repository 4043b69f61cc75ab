"""A new VM made from a template version (thin or cloned) or cloned from a stopped VM.

The VM inherits its source's settings and what the task sets overrides them;
disks are matched by name (a task's disk of a source disk's name changes that
disk's settings, other disks are added). The source is chosen at creation only:
naming another template for an existing VM is refused.

- thin (``clone: false``): each template disk becomes a qcow2 overlay whose
  volume row has the template volume as parent; the agent makes the overlay at
  the VM's first start, on the template volume's storage domain.
- cloned (``clone: true``, or ``snapshot_vm``): each source disk is copied by an
  agent (``copy_volume``, the chain flattened) into the VM's own volume at
  creation; a copy that fails removes the new VM and what was copied. With
  ``snapshot_name`` or ``snapshot_id`` the source is that snapshot of
  ``snapshot_vm`` (snapshot_sources), which may be running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib.model import DeviceType, Vm, Volume
from engine_lib.protocol.errors import InvalidSpec, KestrelError
from engine_lib.services import snapshot_sources, templates, vm_sources, volumes
from engine_lib.services.common import audit, find
from engine_lib.services.host_records import HostRef
from engine_lib.spec import ORIGIN_KEYS

# A source disk's keys that name its volume and chain, never a new VM's.
_VOLUME_KEYS = ("image_id", "volume_id", "chain")
# A disk's settings in the user's terms (spec.disk takes them back).
_DISK_SETTINGS = ("format", "interface", "storage_domain", "bootable", "boot_order", "readonly",
                  "shareable", "cache", "io", "discard", "iotune", "serial")


@dataclass
class Copies:
    """Volume copies a new VM waits for: (source, target volume dict) pairs."""

    vm: str
    host: HostRef
    pairs: list[tuple[dict, dict]] = field(default_factory=list)
    # The snapshot copied from, locked until the copies end ("" for none).
    snapshot_id: str = ""


def _user_disk(disk: dict) -> dict:
    out = {k: disk[k] for k in _DISK_SETTINGS if disk.get(k) not in (None, "")}
    out["size"] = f"{disk['size_mib']}MiB"
    return out


def has_source_disks(spec: object) -> bool:
    """Whether a raw spec lists disks of a VM made from a source (see fill_disks)."""
    return isinstance(spec, dict) and isinstance(spec.get("disks"), list) and \
        bool(spec.get("template") or spec.get("snapshot_vm"))


def fill_disks(session: Session, spec: dict) -> dict:
    """The raw spec with each disk entry completed from the disk of the same name of
    its source (the template, the cloned VM, or the existing VM itself), so a task
    gives only what it changes."""
    if not has_source_disks(spec):
        return spec
    existing = find(session, Vm, spec.get("name")) if isinstance(spec.get("name"), str) \
        else None
    if existing is not None:
        source = [{**d.spec, "name": d.name} for d in existing.devices_of(DeviceType.DISK)]
    elif spec.get("template"):
        version = spec.get("template_version")
        template = templates.lookup(session, str(spec["template"]),
                                    version if isinstance(version, int) else None)
        source = template.spec.get("disks", [])
    else:
        vm = find(session, Vm, str(spec["snapshot_vm"]))
        source = [{**d.spec, "name": d.name} for d in vm.devices_of(DeviceType.DISK)] \
            if vm else []
    by_name = {d["name"]: d for d in source if "lun" not in d}
    disks = [{**_user_disk(by_name[d["name"]]), **d}
             if isinstance(d, dict) and d.get("name") in by_name else d for d in spec["disks"]]
    return {**spec, "disks": disks}


def check_unchanged(vm: Vm, wanted: dict) -> None:
    """An existing VM keeps the template it was made from."""
    if "template" not in wanted:
        return
    current = vm.template
    if current is None or current.name != wanted["template"] or (
            "template_version" in wanted
            and wanted["template_version"] != current.version_number):
        made = (f"template '{current.name}' version {current.version_number}" if current
                else "no template")
        raise InvalidSpec("template", f"VM '{vm.name}' exists and was made from {made}; a VM's "
                                      "template is chosen only when the VM is created")


def without_origin(wanted: dict) -> dict:
    return {k: v for k, v in wanted.items() if k not in ORIGIN_KEYS}


def _merge(source: dict, wanted: dict) -> dict:
    """The source's settings, overridden by the task's (disks by name)."""
    merged = {**{k: v for k, v in source.items() if k not in ("disks", "nics")},
              **without_origin(wanted)}
    given = {d["name"]: d for d in wanted.get("disks", [])}
    merged["disks"] = [{**d, **given.pop(d["name"], {})} for d in source["disks"]] \
        + list(given.values())
    merged["nics"] = wanted.get("nics", source.get("nics", []))
    return merged


def create(session: Session, wanted: dict, make: Callable[[dict], Vm]) -> tuple[Vm, Copies | None]:
    """Create the VM from its source with ``make`` (vm_config.create); the copies a
    cloned VM still needs are returned for ``run_copies`` after the commit."""
    snapshot_id = ""
    if "template" in wanted:
        template = templates.lookup(session, wanted["template"], wanted.get("template_version"))
        if "cluster" in wanted and wanted["cluster"] != template.cluster.name:
            raise InvalidSpec("cluster", f"template '{template.name}' is in cluster "
                                         f"'{template.cluster.name}'")
        source = {**template.spec, "cluster": template.cluster.name}
        sources = {d["name"]: session.get(Volume, d["volume_id"]) for d in source["disks"]}
        clone = wanted.get("clone", False)
        spec = _merge(source, wanted)
        for index, disk in enumerate(spec["disks"]):
            if disk["name"] in sources:
                _check_disk(index, disk, sources[disk["name"]], thin=not clone)
                for key in _VOLUME_KEYS:
                    disk.pop(key, None)
                if not clone:  # vm_config registers it as an overlay on the template's
                    disk["parent_volume_id"] = sources[disk["name"]].id
        vm = make(spec)
        vm.template = template
        origin = {name: vm_sources.volume_source(volume) for name, volume in sources.items()}
        what = f"template '{template.name}' version {template.version_number}"
    else:
        source_vm = find(session, Vm, wanted["snapshot_vm"])
        if source_vm is None:
            raise InvalidSpec("snapshot_vm", f"VM '{wanted['snapshot_vm']}' does not exist")
        if "snapshot_id" in wanted or "snapshot_name" in wanted:
            snapshot = snapshot_sources.find(session, source_vm,
                                             snapshot_id=wanted.get("snapshot_id", ""),
                                             snapshot_name=wanted.get("snapshot_name", ""))
            source = {**snapshot_sources.settings(snapshot, source_vm),
                      "cluster": source_vm.cluster.name, "description": source_vm.description}
            origin = {d["name"]: snapshot_sources.disk_source(session, snapshot, d)
                      for d in source["disks"] if "lun" not in d}
            if origin:  # the copies run after the commit: the chain holds still until then
                snapshot_sources.lock(snapshot)
                snapshot_id = snapshot.id
        else:
            vm_sources.require_down(source_vm, f"cloning it into VM '{wanted['name']}'")
            source = {**vm_sources.settings_of(source_vm), "cluster": source_vm.cluster.name,
                      "description": source_vm.description}
            origin = {d["name"]: vm_sources.disk_source(session, source_vm, d,
                                                        f"snapshot_vm.disks[{i}]")
                      for i, d in enumerate(source["disks"]) if "lun" not in d}
        spec = _merge(source, wanted)
        for index, disk in enumerate(spec["disks"]):
            if disk["name"] in origin:
                if disk["size_mib"] < origin[disk["name"]]["size_mib"]:
                    raise InvalidSpec(f"disks[{index}].size", "cannot be smaller than the "
                                                              "source disk's")
                for key in _VOLUME_KEYS:
                    disk.pop(key, None)
        clone = True
        sources = {}
        vm = make(spec)
        what = f"VM '{source_vm.name}'" + (f" snapshot {snapshot_id}" if snapshot_id else "")
    session.flush()
    copies = Copies(vm.name, vm_sources.helper_host(session, vm.cluster_id,
                                                    f"cannot create VM '{vm.name}'"),
                    snapshot_id=snapshot_id) \
        if clone and origin else None
    for device in vm.devices_of(DeviceType.DISK):
        if copies is None or device.name not in origin:
            continue  # a thin disk's row is an overlay vm_config registered
        # The copy makes the volume: never created blank by a start meanwhile.
        volume = volumes.volume_of(session, device)
        volume.status, device.volume_created = "locked", True
        copies.pairs.append((origin[device.name], vm_sources.volume_dict(volume)))
    session.flush()
    audit(session, "vm", vm.name, f"VM created from {what}"
          + (" (disks copied)" if copies else " (thin disks)" if origin else ""))
    return vm, copies


def _check_disk(index: int, disk: dict, volume: Volume | None, thin: bool) -> None:
    field_ = f"disks[{index}]"
    if volume is None:
        raise InvalidSpec("template", f"the volume of template disk '{disk['name']}' is gone")
    if disk["size_mib"] < volume.size_mib:
        raise InvalidSpec(f"{field_}.size", f"cannot be smaller than the template disk's "
                                            f"({volume.size_mib} MiB)")
    if thin and disk["storage_domain"] != volume.storage_domain:
        raise InvalidSpec(f"{field_}.storage_domain",
                          f"a thin disk lives on its template volume's storage domain "
                          f"'{volume.storage_domain}'; use clone: true to copy it elsewhere")
    if thin and disk["format"] != "qcow2":
        raise InvalidSpec(f"{field_}.format", "a thin disk is a qcow2 overlay on the template "
                                              "volume; use clone: true for a raw copy")


def run_copies(engine, copies: Copies, progress: Callable[[dict], None] | None = None) -> None:
    """Copy a new VM's disks; on failure the VM goes, with what was copied."""
    try:
        _copy_all(engine, copies, progress)
    finally:
        if copies.snapshot_id:
            snapshot_sources.release(engine, copies.snapshot_id)


def _copy_all(engine, copies: Copies, progress: Callable[[dict], None] | None) -> None:
    agent = engine.agent(copies.host.address, copies.host.port)
    on_job = snapshot_sources.on_job(engine, copies.snapshot_id, copies.host.name) \
        if copies.snapshot_id else None
    made: list[dict] = []
    try:
        for source, target in copies.pairs:
            made.append(target)
            vm_sources.copy(engine, copies.host, source, target, progress, on_job=on_job)
    except KestrelError as err:
        why = vm_sources.delete_quietly(agent, made)
        with engine.store.transaction() as session:
            vm = find(session, Vm, copies.vm)
            ids = [t["volume"] for _, t in copies.pairs]
            if why:
                for volume in session.scalars(select(Volume).where(Volume.id.in_(ids))):
                    volume.status = "illegal"
                audit(session, "vm", copies.vm, f"copying its disks failed ({err.message}); "
                      f"the copies could not be deleted ({why}): remove the VM", "error")
            else:
                for volume in session.scalars(select(Volume).where(Volume.id.in_(ids))):
                    session.delete(volume)
                if vm is not None:
                    session.delete(vm)
                audit(session, "vm", copies.vm, f"VM not created: copying its disks failed "
                      f"({err.message})", "error")
        raise
    with engine.store.transaction() as session:
        for volume in session.scalars(select(Volume).where(
                Volume.id.in_([t["volume"] for _, t in copies.pairs]))):
            volume.status = "ok"

