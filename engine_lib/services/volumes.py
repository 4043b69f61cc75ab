"""The volume registry: one ``volumes`` row per file on a storage domain, and its chain.

Every VM disk on a storage domain has a row (its device spec names the row's
``image_id`` and ``id`` as ``image_id``/``volume_id``); a template version's
volumes and floating disks (a detached disk, an upload with no VM) have rows
too. A row's ``parent`` is the volume it is a qcow2 overlay on, on the same
domain. The rows are the truth; a disk's device spec carries a copy of its
chain (``spec["chain"]``, ``chain_refs``) so the domain XML renders without a
database, as it carries a registered LUN's path.

Callers hold a session (a transaction); nothing here talks to an agent.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from engine_lib.model import DeviceType, Vm, VmDevice, Volume
from engine_lib.protocol.errors import InvalidSpec, KestrelError


def new_disk_volume(session: Session, spec: dict, parent: Volume | None = None) -> Volume:
    """Register the volume of a new disk and return it.

    ``spec`` is the disk's device spec (storage_domain, image_id, volume_id, format,
    size_mib). With ``parent`` the volume is an overlay on it: the parent must be on
    the same domain, the disk qcow2, and ``spec["chain"]`` is set to the chain.
    """
    if parent is not None:
        if parent.storage_domain != spec["storage_domain"]:
            raise InvalidSpec("storage_domain", f"'{spec['storage_domain']}': an overlay stays "
                                                f"on its backing volume's storage domain "
                                                f"'{parent.storage_domain}'")
        if spec["format"] != "qcow2":
            raise InvalidSpec("format", f"'{spec['format']}': only a qcow2 disk can be an "
                                        "overlay on another volume")
    volume = Volume(id=spec["volume_id"], image_id=spec["image_id"],
                    storage_domain=spec["storage_domain"], parent=parent,
                    format=spec["format"], size_mib=spec["size_mib"], content_type="data",
                    name="", description="", status="ok", readonly=False, sha256="")
    session.add(volume)
    if parent is not None:
        spec["chain"] = chain_refs(volume)
    return volume


def volume_of(session: Session, device: VmDevice) -> Volume | None:
    """A disk's own volume row (None for a LUN, or a disk with no row)."""
    volume_id = device.spec.get("volume_id")
    if not volume_id or "lun" in device.spec:
        return None
    with session.no_autoflush:
        return session.get(Volume, volume_id)


def chain_refs(volume: Volume) -> list[dict]:
    """The volumes under ``volume``, nearest first, as a disk spec's ``chain`` holds them
    (``image_id``, ``volume_id``, ``format``, ``size_mib``)."""
    return [{"image_id": v.image_id, "volume_id": v.id, "format": v.format,
             "size_mib": v.size_mib} for v in volume.chain()]


def _disks(session: Session) -> list[tuple[str, str, str]]:
    """(volume id, VM name, disk name) of every VM disk with a volume."""
    with session.no_autoflush:
        rows = session.execute(select(VmDevice.spec, Vm.name, VmDevice.name).join(Vm)
                               .where(VmDevice.type == DeviceType.DISK))
        return [(spec["volume_id"], vm, disk) for spec, vm, disk in rows
                if spec.get("volume_id") and "lun" not in spec]


def users(session: Session, volume_id: str) -> list[tuple[str, str]]:
    """(VM name, disk name) of the disks whose own volume is ``volume_id``."""
    return sorted((vm, disk) for vid, vm, disk in _disks(session) if vid == volume_id)


def children(session: Session, volume_ids: list[str]) -> list[tuple[str, str]]:
    """Who depends on any of ``volume_ids``: every volume whose chain holds one, as
    (VM name, disk name) for a VM disk, ("", name or id) for a floating volume and
    ("template <name>", id) for a template's. Empty: nothing reads them as a backing."""
    found: list[Volume] = []
    frontier = list(volume_ids)
    with session.no_autoflush:
        while frontier:
            below = list(session.scalars(select(Volume).where(Volume.parent_id.in_(frontier))))
            found.extend(below)
            frontier = [v.id for v in below]
    if not found:
        return []
    disks = {vid: (vm, disk) for vid, vm, disk in _disks(session)}
    out = set()
    for volume in found:
        if volume.id in disks:
            out.add(disks[volume.id])
        elif volume.template is not None:
            out.add((f"template {volume.template.name}", volume.id))
        else:
            out.add(("", volume.name or volume.id))
    return sorted(out)


def check_free(session: Session, volume_id: str, storage_domain: str, fmt: str,
               field: str = "volume") -> Volume:
    """The volume ``volume_id`` if a new disk may take it: registered, on the disk's
    domain in its format, not a template's, not another disk's, not being written.
    InvalidSpec naming ``field`` otherwise."""
    with session.no_autoflush:
        volume = session.get(Volume, volume_id)
    if volume is None:
        raise InvalidSpec(field, f"volume {volume_id} is not a registered volume")
    if volume.template_id is not None:
        raise InvalidSpec(field, f"volume {volume_id} belongs to template "
                                 f"'{volume.template.name}'; make a VM from the template "
                                 "instead")
    taken = users(session, volume_id)
    if taken:
        raise InvalidSpec(field, f"volume {volume_id} is disk '{taken[0][1]}' of VM "
                                 f"'{taken[0][0]}'; detach it there first")
    if volume.status != "ok":
        raise InvalidSpec(field, f"volume {volume_id} is {volume.status}, not ok")
    if volume.storage_domain != storage_domain:
        raise InvalidSpec(field, f"volume {volume_id} is on storage domain "
                                 f"'{volume.storage_domain}', not '{storage_domain}'")
    if volume.format != fmt:
        raise InvalidSpec(field, f"volume {volume_id} is {volume.format}, not {fmt}")
    return volume


def attach(session: Session, spec: dict, field: str = "volume") -> Volume:
    """A new disk takes the existing volume its spec names (check_free): the volume is
    no longer floating, and the spec gets its chain."""
    volume = check_free(session, spec["volume_id"], spec["storage_domain"], spec["format"],
                        field)
    if volume.image_id != spec["image_id"]:
        raise InvalidSpec(f"{field}.image_id", f"volume {volume.id} is in image "
                                               f"{volume.image_id}, not {spec['image_id']}")
    volume.name = ""
    # Always an UPDATE under the row's version: of two disks taking the same volume at
    # once, the second transaction fails (StaleDataError) and its retry finds it taken.
    flag_modified(volume, "name")
    chain = chain_refs(volume)
    if chain:
        spec["chain"] = chain
    else:
        spec.pop("chain", None)
    return volume


def record_job(engine, volume_id: str, job: str, host: str) -> None:
    """Note which agent job (on which host) writes a locked volume, so that a job lost
    with its agent or its writer is found and cleaned up (images.reconcile)."""
    with engine.store.transaction() as session:
        volume = session.get(Volume, volume_id)
        if volume is None:  # reconciled away meanwhile: the job must not go on
            raise KestrelError(f"volume {volume_id} was removed while its job started")
        volume.job_id, volume.job_host = job, host
