"""POST /vms/{id}/backups, checked completely before anything on the host changes.

Pure (no libvirt): the API validates with it, engine_lib.agent.backups runs it.
Checkpoint names become libvirt checkpoint names and qcow2 bitmap names, so
they are kept to a plain alphabet. An incremental target is an overlay on the
disk's previous backup volume named relative to it, so both must be on one
storage domain.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol.errors import InvalidSpec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_TARGET = re.compile(r"^[a-z]{1,8}[a-z0-9]{0,8}$")
_VOLUME_KEYS = {"domain", "image", "volume", "format", "size_mib"}


@dataclass(frozen=True)
class BackupDisk:
    alias: str
    target: str  # the guest device name ("vda"), as libvirt's backup XML names disks
    volume: VolumeLocation  # the backup file to create
    parent: VolumeLocation | None  # the disk's previous backup volume (incremental)


@dataclass(frozen=True)
class BackupRequest:
    backup: str
    checkpoint: str
    incremental: str  # "" for a full backup
    checkpoints: tuple[tuple[str, str], ...]  # (id, xml), oldest first
    disks: tuple[BackupDisk, ...]


def checkpoint_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidSpec(field, f"{value!r} is not a checkpoint id (letters, digits, '.', "
                                 "'_', '-'; up to 100, starting with a letter or digit)")
    return value


def parse(body: dict) -> BackupRequest:
    backup = body.get("backup")
    try:
        backup = str(uuid.UUID(backup)) if isinstance(backup, str) else None
    except ValueError:
        backup = None
    if backup is None:
        raise InvalidSpec("backup", f"a backup id (a UUID) is required, got "
                                    f"{body.get('backup')!r}")
    checkpoint = checkpoint_name(body.get("checkpoint"), "checkpoint")
    incremental = body.get("incremental", "")
    if incremental != "":
        checkpoint_name(incremental, "incremental")
        if incremental == checkpoint:
            raise InvalidSpec("incremental", f"'{incremental}' is the new checkpoint itself; "
                                             "name the checkpoint of the previous backup")
    return BackupRequest(backup=backup, checkpoint=checkpoint, incremental=incremental,
                         checkpoints=_checkpoints(body.get("checkpoints", []), checkpoint),
                         disks=_disks(body.get("disks"), bool(incremental)))


def _checkpoints(items: Any, new: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(items, list):
        raise InvalidSpec("checkpoints", "must be a list of {id, xml}, oldest first")
    seen: set[str] = set()
    result = []
    for index, item in enumerate(items):
        where = f"checkpoints[{index}]"
        if not isinstance(item, dict) or set(item) != {"id", "xml"}:
            raise InvalidSpec(where, "must be an object with exactly id and xml")
        name = checkpoint_name(item["id"], f"{where}.id")
        if name in seen or name == new:
            raise InvalidSpec(f"{where}.id", f"checkpoint '{name}' is listed twice"
                              if name in seen else f"'{name}' is the new checkpoint")
        seen.add(name)
        xml = item["xml"]
        try:
            root = ET.fromstring(xml) if isinstance(xml, str) else None
        except ET.ParseError as exc:
            raise InvalidSpec(f"{where}.xml", f"not XML ({exc})") from None
        if root is None or root.tag != "domaincheckpoint" or root.findtext("name") != name:
            raise InvalidSpec(f"{where}.xml", f"must be the <domaincheckpoint> of '{name}' "
                                              "as a backup's result gave it")
        result.append((name, xml))
    return tuple(result)


def _disks(items: Any, incremental: bool) -> tuple[BackupDisk, ...]:
    if not isinstance(items, list) or not items:
        raise InvalidSpec("disks", "a non-empty list of {alias, target, target_volume, "
                                   "parent_volume} is required")
    disks, targets = [], set()
    for index, item in enumerate(items):
        where = f"disks[{index}]"
        if not isinstance(item, dict):
            raise InvalidSpec(where, "must be an object")
        unknown = set(item) - {"alias", "target", "target_volume", "parent_volume"}
        if unknown:
            raise InvalidSpec(where, f"unknown keys {sorted(unknown)}")
        alias = item.get("alias")
        if not isinstance(alias, str) or not alias.startswith("ua-"):
            raise InvalidSpec(f"{where}.alias", f"{alias!r} is not a device alias (ua-...)")
        target = item.get("target")
        if not isinstance(target, str) or not _TARGET.match(target):
            raise InvalidSpec(f"{where}.target", f"{target!r} is not a disk's target "
                                                 "device name (e.g. vda)")
        if target in targets:
            raise InvalidSpec(f"{where}.target", f"disk '{target}' is listed twice")
        targets.add(target)
        volume = _volume(item.get("target_volume"), f"{where}.target_volume")
        parent = item.get("parent_volume")
        if parent is None and incremental:
            raise InvalidSpec(f"{where}.parent_volume", "an incremental backup's file is an "
                                                        "overlay on the disk's previous backup "
                                                        "volume: name it")
        if parent is not None and not incremental:
            raise InvalidSpec(f"{where}.parent_volume", "a full backup has no parent volume "
                                                        "(incremental is '')")
        parent_location = None
        if parent is not None:
            parent_location = _volume(parent, f"{where}.parent_volume")
            if parent_location.domain != volume.domain:
                raise InvalidSpec(f"{where}.parent_volume", "must be on the target volume's "
                                                            f"storage domain '{volume.domain}'")
            if parent_location == volume:
                raise InvalidSpec(f"{where}.parent_volume", "is the target volume itself")
        disks.append(BackupDisk(alias=alias, target=target, volume=volume,
                                parent=parent_location))
    return tuple(disks)


def _volume(item: Any, where: str) -> VolumeLocation:
    if not isinstance(item, dict):
        raise InvalidSpec(where, "must be an object {domain, image, volume}")
    unknown = set(item) - _VOLUME_KEYS
    if unknown:
        raise InvalidSpec(where, f"unknown keys {sorted(unknown)}")
    for key in ("domain", "image", "volume"):
        value = item.get(key)
        if not isinstance(value, str) or not value or "/" in value or "\x00" in value \
                or value in (".", ".."):
            raise InvalidSpec(f"{where}.{key}", f"{value!r} is not a name (a non-empty "
                                                "string without '/')")
    if item.get("format", "qcow2") != "qcow2":
        raise InvalidSpec(f"{where}.format", f"{item['format']!r}: backup volumes are qcow2")
    return VolumeLocation(item["domain"], item["image"], item["volume"])
