"""Disk volumes on storage domains: create the missing ones, delete on request.

A volume lives at ``<storage domain mount>/<image>/<volume>`` (oVirt's file
domain layout, without the metadata files). Creation never touches an
existing file: starting a VM again must never wipe its disk. Only a volume
the engine marks ``create`` (its disk never ran) is created; any other that
is missing (a domain not mounted, a half-finished removal) fails the start,
for a VM must never boot from a blank disk in place of its data. Deletion
only ever removes files inside a configured storage domain.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass

from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.metadata import VolumeRef

FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class VolumeLocation:
    domain: str
    image: str
    volume: str

    def path(self, storage_domains: dict[str, str]) -> str:
        _segment("volume.image", self.image)
        _segment("volume.volume", self.volume)
        try:
            root = storage_domains[self.domain]
        except KeyError:
            raise InvalidSpec("volume.domain", f"storage domain '{self.domain}' is not "
                                               "attached to this host") from None
        return os.path.join(root, self.image, self.volume)


def _segment(field: str, value: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or value in (".", "..") \
            or "\x00" in value:
        raise InvalidSpec(field, f"'{value}' is not a valid file name")
    return value


def prepare(refs: list[VolumeRef], storage_domains: dict[str, str]) -> list[str]:
    """Create every volume in ``refs`` whose file does not exist and that the engine lets
    us create; return the paths created.

    All refs are checked before anything is created, so a bad ref (or a missing volume
    that must exist) changes nothing.
    """
    planned = []
    for ref in refs:
        where = f"volume '{ref.alias or ref.volume}'"
        if ref.format not in FORMATS:
            raise InvalidSpec(f"{where}.format", f"'{ref.format}' is not one of {FORMATS}")
        if ref.size_mib <= 0:
            raise InvalidSpec(f"{where}.size_mib", f"{ref.size_mib} is not a positive size")
        path = VolumeLocation(ref.domain, ref.image, ref.volume).path(storage_domains)
        if not ref.create and not os.path.lexists(path):
            disk = f"disk '{ref.disk}'" if ref.disk else where
            raise Conflict(f"{disk}: its volume {path} is missing on storage domain "
                           f"'{ref.domain}' (not mounted on this host, or removed); the disk "
                           "has run before, so it is not created again as a blank disk",
                           disk=ref.disk, alias=ref.alias, path=path)
        planned.append((ref, path))
    created = []
    for ref, path in planned:
        if os.path.lexists(path):
            continue
        _create(path, ref.format, ref.size_mib, storage_domains[ref.domain])
        created.append(path)
    return created


def _create(path: str, fmt: str, size_mib: int, domain_root: str) -> None:
    if not os.path.isdir(domain_root):
        raise KestrelError(f"storage domain mount point {domain_root} does not exist "
                           "on this host", path=domain_root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Create under a temporary name and hard-link into place: the link fails
    # if another request created the volume meanwhile, and it is never clobbered.
    tmp = f"{path}.creating-{uuid.uuid4().hex[:12]}"
    try:
        result = subprocess.run(["qemu-img", "create", "-q", "-f", fmt, tmp, f"{size_mib}M"],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise KestrelError(f"qemu-img could not create {fmt} volume {path}: "
                               f"{result.stderr.strip() or result.returncode}", path=path)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def delete(locations: list[VolumeLocation], storage_domains: dict[str, str],
           in_use: set[str]) -> list[dict]:
    """Delete volume files; refuse any that a domain on this host still uses.

    Missing files count as deleted already (the engine may retry). Every
    location is checked before anything is removed. Empty image directories
    are removed as well.
    """
    planned = []
    used = {os.path.realpath(p) for p in in_use}
    for loc in locations:
        path = loc.path(storage_domains)
        root = os.path.realpath(storage_domains[loc.domain])
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            raise InvalidSpec("volume", f"{path} resolves to {real}, outside storage "
                                        f"domain '{loc.domain}'")
        if real in used:
            raise Conflict(f"volume {path} is a disk of a VM defined on this host; "
                           "remove the VM first", path=path)
        planned.append((loc, path))
    results = []
    for loc, path in planned:
        existed = os.path.lexists(path)
        if existed:
            os.unlink(path)
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass  # not empty (other volumes of the image) or already gone
        results.append({"domain": loc.domain, "image": loc.image, "volume": loc.volume,
                        "path": path, "deleted": existed})
    return results


def virtual_size_mib(path: str, fmt: str) -> int:
    result = subprocess.run(["qemu-img", "info", "--output=json", "-U", "-f", fmt, path],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KestrelError(f"qemu-img cannot read volume {path}: "
                           f"{result.stderr.strip() or result.returncode}", path=path)
    return json.loads(result.stdout)["virtual-size"] // (1024 * 1024)


def grow(path: str, fmt: str, size_mib: int) -> dict:
    """Grow a volume no running domain uses to ``size_mib``; never shrink.

    A missing file is left alone: ``prepare`` creates it at its full size at
    the VM's next start. qemu-img's image lock refuses a file QEMU has open.
    """
    if fmt not in FORMATS:
        raise InvalidSpec("volume.format", f"'{fmt}' is not one of {FORMATS}")
    if not os.path.lexists(path):
        return {"path": path, "resized": False, "exists": False, "size_mib": None}
    current = virtual_size_mib(path, fmt)
    if current >= size_mib:
        return {"path": path, "resized": False, "exists": True, "size_mib": current}
    result = subprocess.run(["qemu-img", "resize", "-q", "-f", fmt, path, f"{size_mib}M"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KestrelError(f"qemu-img could not grow volume {path} to {size_mib} MiB: "
                           f"{result.stderr.strip() or result.returncode}", path=path)
    return {"path": path, "resized": True, "exists": True, "size_mib": size_mib}
