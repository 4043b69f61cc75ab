"""Registered LUNs: the block devices VM disks may use directly (oVirt's direct LUN disks).

Only an administrator registers one (``kestrel lun add``); a VM disk then names it
(``lun: <name or wwid>``) and never a host path. The engine resolves the name when
the disk is added and writes a placeholder plus the registered path into the domain's
metadata; the agent uses only paths that arrive that way, and only block devices.
A LUN that VM disks use cannot be removed.
"""

from __future__ import annotations

import re

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from engine_lib.model import DeviceType, Lun, Vm, VmDevice
from engine_lib.protocol.errors import Conflict, InvalidSpec, NotFound
from engine_lib.services.common import audit, find, retry_on_conflict
from engine_lib.services.results import Outcome
from engine_lib.spec import name as check_name
from engine_lib.spec import text

# A device node or a udev link under /dev; no "..", no spaces.
DEVICE_RE = re.compile(r"^/dev/[A-Za-z0-9._:+@=-]+(/[A-Za-z0-9._:+@=-]+)*$")
WWID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def lun_dict(lun: Lun) -> dict:
    return {"name": lun.name, "path": lun.path, "wwid": lun.wwid or None,
            "description": lun.description}


def device_path(field: str, value) -> str:
    value = text(field, value, 1024)
    if not DEVICE_RE.match(value) or ".." in value.split("/"):
        raise InvalidSpec(field, f"must be a block device path under /dev (got {value!r})")
    return value


def lookup(session: Session, ref: str) -> Lun | None:
    """The registered LUN a disk names, by name or WWID."""
    return session.scalars(select(Lun).where(or_(Lun.name == ref, Lun.wwid == ref))
                           .order_by(Lun.name)).first()


def users(session: Session, name: str) -> list[str]:
    rows = session.execute(select(Vm.name, VmDevice.spec).join(VmDevice)
                           .where(VmDevice.type == DeviceType.DISK))
    return sorted({vm for vm, spec in rows if spec.get("lun") == name})


class LunService:
    def __init__(self, engine):
        self.engine = engine

    @retry_on_conflict
    def register(self, name: str, path: str, *, wwid: str = "", description: str = "") -> Outcome:
        """Register a LUN, or change its description (its path and WWID are fixed while
        registered: VMs were given this device)."""
        check_name("name", name)
        path = device_path("path", path)
        if wwid and (not isinstance(wwid, str) or not WWID_RE.match(wwid)):
            raise InvalidSpec("wwid", f"{wwid!r} is not a WWID")
        description = text("description", description)
        with self.engine.store.transaction() as session:
            lun = find(session, Lun, name)
            before = lun_dict(lun) if lun else {}
            if lun is None:
                clash = lookup(session, wwid) if wwid else None
                if clash is not None:
                    raise Conflict(f"WWID {wwid} is already registered as LUN '{clash.name}'")
                lun = Lun(name=name, path=path, wwid=wwid, description=description)
                session.add(lun)
            else:
                for key, value in (("path", path), ("wwid", wwid)):
                    if getattr(lun, key) != value:
                        raise Conflict(f"LUN '{name}' is registered with {key} "
                                       f"{getattr(lun, key) or 'none'}; remove it first")
                lun.description = description
            session.flush()
            after = lun_dict(lun)
            if before != after:
                audit(session, "lun", name, f"LUN {'updated' if before else 'registered'}: "
                                            f"{path}")
        return Outcome(before != after, after, {"before": before, "after": after})

    @retry_on_conflict
    def remove(self, name: str) -> Outcome:
        with self.engine.store.transaction() as session:
            lun = find(session, Lun, name)
            if lun is None:
                return Outcome(False, None, None)
            vms = users(session, name)
            if vms:
                raise Conflict(f"LUN '{name}' is a disk of VM(s) {', '.join(vms)}; remove "
                               "those disks first", vms=vms)
            before = lun_dict(lun)
            session.delete(lun)
            audit(session, "lun", name, "LUN removed")
        return Outcome(True, None, {"before": before, "after": {}})

    def info(self, name: str | None = None) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            query = select(Lun).order_by(Lun.name)
            if name:
                query = query.where(Lun.name == name)
            luns = [lun_dict(lun) for lun in session.scalars(query)]
        if name and not luns:
            raise NotFound("LUN", name)
        return luns
