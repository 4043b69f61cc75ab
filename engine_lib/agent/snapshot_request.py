"""POST /vms/{id}/snapshots, checked whole before anything on the host changes.

Kept apart from engine_lib.agent.snapshots so the API validates without libvirt.
Every error names the field of the request (``disks[1].parent.format``, ``metadata``).
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from engine_lib.agent.volumes import FORMATS, VolumeLocation
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import InvalidSpec

_VOLUME_KEYS = {"domain", "image", "volume", "format", "size_mib"}
_DISK_KEYS = {"alias", "volume", "parent"}


@dataclass(frozen=True)
class Overlay:
    """One disk's part of a snapshot: the new top ``volume`` over the current top ``parent``."""

    alias: str
    volume: VolumeLocation
    parent: VolumeLocation
    parent_format: str
    size_mib: int


@dataclass(frozen=True)
class SnapshotRequest:
    snapshot: str
    disks: list[Overlay]
    memory: VolumeLocation | None
    quiesce: bool
    metadata_xml: str


def parse(body: dict) -> SnapshotRequest:
    """The request as a SnapshotRequest; InvalidSpec naming the first bad field."""
    text = body.get("snapshot")
    try:
        snapshot = str(uuid.UUID(text)) if isinstance(text, str) else ""
    except ValueError:
        snapshot = ""
    if not snapshot:
        raise InvalidSpec("snapshot", f"the snapshot's id (a UUID) is required, got {text!r}")
    items = body.get("disks")
    if not isinstance(items, list) or not items:
        raise InvalidSpec("disks", "a non-empty list of {alias, volume, parent} is required")
    disks = [overlay(item, f"disks[{i}]") for i, item in enumerate(items)]
    for field, values in (("alias", [d.alias for d in disks]),
                          ("volume", [d.volume for d in disks])):
        for index, value in enumerate(values):
            if value in values[:index]:
                raise InvalidSpec(f"disks[{index}].{field}", "named twice in one snapshot")
    memory = None
    if body.get("memory_volume") is not None:
        memory = location(body["memory_volume"], "memory_volume", {"domain", "image",
                                                                     "volume"})
    quiesce = body.get("quiesce", False)
    if not isinstance(quiesce, bool):
        raise InvalidSpec("quiesce", f"must be true or false, got {quiesce!r}")
    text = body.get("metadata")
    if not isinstance(text, str) or not text.strip():
        raise InvalidSpec("metadata", "the <kestrel:vm> element for the new chain is required")
    check_metadata(text, disks)
    return SnapshotRequest(snapshot, disks, memory, quiesce, text)


def overlay(item: Any, where: str) -> Overlay:
    """A {alias, volume, parent} entry (POST /volumes/overlay has no alias)."""
    if not isinstance(item, dict):
        raise InvalidSpec(where, "must be an object {alias, volume, parent}")
    unknown = set(item) - _DISK_KEYS
    if unknown:
        raise InvalidSpec(where, f"unknown keys {sorted(unknown)}")
    alias = item.get("alias", "")
    if "alias" in item and (not isinstance(alias, str) or not alias.startswith("ua-")):
        raise InvalidSpec(f"{where}.alias", f"{alias!r} is not a device alias (ua-...)")
    return new_top(item.get("volume"), item.get("parent"), where, alias)


def new_top(volume: Any, parent: Any, where: str = "", alias: str = "") -> Overlay:
    """A new qcow2 ``volume`` over ``parent``, both {domain, image, volume, format, size_mib}."""
    prefix = f"{where}." if where else ""
    top = location(volume, f"{prefix}volume", _VOLUME_KEYS)
    if volume.get("format", "qcow2") != "qcow2":
        raise InvalidSpec(f"{prefix}volume.format", f"'{volume['format']}': a snapshot's "
                                                    "new top is qcow2")
    size = volume.get("size_mib", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidSpec(f"{prefix}volume.size_mib", f"a size in MiB (0: the parent's) is "
                                                      f"required, got {size!r}")
    below = location(parent, f"{prefix}parent", _VOLUME_KEYS)
    fmt = parent.get("format", "qcow2")
    if fmt not in FORMATS:
        raise InvalidSpec(f"{prefix}parent.format", f"{fmt!r} is not one of {FORMATS}")
    if below.domain != top.domain:
        raise InvalidSpec(f"{prefix}parent.domain", f"'{below.domain}': the new top and its "
                                                    f"parent share a storage domain "
                                                    f"('{top.domain}')")
    if below == top:
        raise InvalidSpec(f"{prefix}volume", "the new top cannot be its own parent")
    return Overlay(alias, top, below, fmt, size)


def location(item: Any, where: str, keys: set[str]) -> VolumeLocation:
    if not isinstance(item, dict):
        raise InvalidSpec(where, "must be an object {domain, image, volume}")
    unknown = set(item) - keys
    if unknown:
        raise InvalidSpec(where, f"unknown keys {sorted(unknown)}")
    for key in ("domain", "image", "volume"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise InvalidSpec(f"{where}.{key}", "a non-empty string is required")
    found = VolumeLocation(item["domain"], item["image"], item["volume"])
    try:
        found.relpath  # noqa: B018 (checks both names are file names)
    except InvalidSpec as exc:
        raise InvalidSpec(f"{where}.{exc.field.split('.')[-1]}", exc.reason) from None
    return found


def check_metadata(text: str, disks: list[Overlay]) -> None:
    """The engine's <kestrel:vm> must list each new top as its disk over its parent."""
    try:
        root = ET.fromstring(f"<domain><metadata>{text}</metadata></domain>")
    except ET.ParseError as exc:
        raise InvalidSpec("metadata", f"not well-formed XML ({exc})") from None
    node = root.find("metadata")
    if node is None or len(node) != 1 or not metadata.carried(root):
        raise InvalidSpec("metadata", f"must be one <{metadata.PREFIX}:vm> element in "
                                      f"namespace {metadata.NAMESPACE}")
    refs = {(ref.domain, ref.relpath): ref for ref in metadata.read(root).volumes}
    for index, disk in enumerate(disks):
        ref = refs.get((disk.volume.domain, disk.volume.relpath))
        if ref is None or ref.alias != disk.alias or ref.parent != disk.parent.relpath \
                or ref.parent_format != disk.parent_format:
            raise InvalidSpec("metadata", f"disks[{index}]: the metadata must list volume "
                                          f"{disk.volume.relpath} as disk {disk.alias} over "
                                          f"{disk.parent.relpath} ({disk.parent_format})")
