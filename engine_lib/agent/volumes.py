"""Disk volumes on storage domains: create the missing ones, delete on request.

A volume lives at ``<storage domain mount>/<image>/<volume>`` (oVirt's file
domain layout, without the metadata files). Creation never touches an
existing file: starting a VM again must never wipe its disk. Only a volume
the engine marks ``create`` (its disk never ran) is created; any other that
is missing (a domain not mounted, a half-finished removal) fails the start,
for a VM must never boot from a blank disk in place of its data. Every file is
reached through engine_lib.agent.paths, so a symlink planted on the domain
never leads creation, growth, deletion or hibernation outside it, and
qemu-img is handed the checked file itself with its format pinned and no
backing file opened (the engine owns chains; a header naming /etc/shadow as
backing is not followed).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from dataclasses import dataclass

from engine_lib.agent import paths
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.metadata import VolumeRef

FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class VolumeLocation:
    domain: str
    image: str
    volume: str

    def root(self, storage_domains: dict[str, str]) -> str:
        try:
            return storage_domains[self.domain]
        except KeyError:
            raise InvalidSpec("volume.domain", f"storage domain '{self.domain}' is not "
                                               "attached to this host") from None

    @property
    def relpath(self) -> str:
        return f"{_segment('volume.image', self.image)}/{_segment('volume.volume', self.volume)}"

    def path(self, storage_domains: dict[str, str]) -> str:
        """Where the volume is (not checked on disk: for messages and comparisons)."""
        return os.path.join(self.root(storage_domains), self.relpath)

    def checked_path(self, storage_domains: dict[str, str], must_exist: bool = False) -> str:
        """The path for libvirt, after checking no link is on the way (paths.confine)."""
        return paths.confine(self.root(storage_domains), self.relpath, "volume",
                             must_exist=must_exist)

    def open(self, storage_domains: dict[str, str], flags: int = os.O_RDONLY) -> int:
        """A descriptor of the volume file, reached without links; FileNotFoundError if absent."""
        return paths.open_file(self.root(storage_domains), self.relpath, "volume", flags)

    def exists(self, storage_domains: dict[str, str]) -> bool:
        """Whether the volume file is there; a link or special file there is refused."""
        try:
            self.checked_path(storage_domains, must_exist=True)
        except FileNotFoundError:
            return False
        return True

    def make_parent(self, storage_domains: dict[str, str]) -> None:
        """Make the image directory (never through a link)."""
        with paths.parent(self.root(storage_domains), self.relpath, "volume", create=True):
            pass

    def unlink(self, storage_domains: dict[str, str]) -> bool:
        """Remove the volume file (not through a link); False when it was not there."""
        try:
            with paths.parent(self.root(storage_domains), self.relpath, "volume") \
                    as (dirfd, name):
                os.unlink(name, dir_fd=dirfd)
        except FileNotFoundError:
            return False
        return True


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
        location = VolumeLocation(ref.domain, ref.image, ref.volume)
        # Also refuses a link (or a link on the way) where the volume should be.
        exists = location.exists(storage_domains)
        if not ref.create and not exists:
            path = location.path(storage_domains)
            disk = f"disk '{ref.disk}'" if ref.disk else where
            raise Conflict(f"{disk}: its volume {path} is missing on storage domain "
                           f"'{ref.domain}' (not mounted on this host, or removed); the disk "
                           "has run before, so it is not created again as a blank disk",
                           disk=ref.disk, alias=ref.alias, path=path)
        planned.append((ref, location, exists))
    created = []
    for ref, location, exists in planned:
        if exists:
            continue
        _create(location, ref.format, ref.size_mib, storage_domains)
        created.append(location.path(storage_domains))
    return created


def _create(location: VolumeLocation, fmt: str, size_mib: int,
            storage_domains: dict[str, str]) -> None:
    root, path = location.root(storage_domains), location.path(storage_domains)
    if not os.path.isdir(root):
        raise KestrelError(f"storage domain mount point {root} does not exist "
                           "on this host", path=root)
    with paths.parent(root, location.relpath, "volume", create=True) as (dirfd, name):
        # Create under a temporary name and hard-link into place: the link fails
        # if another request created the volume meanwhile, and it is never clobbered.
        # qemu-img writes through our descriptor of the file made here.
        tmp = f"{name}.creating-{uuid.uuid4().hex[:12]}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=dirfd)
        try:
            result = subprocess.run(["qemu-img", "create", "-q", "-f", fmt, paths.fd_path(fd),
                                     f"{size_mib}M"], pass_fds=(fd,),
                                    capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise KestrelError(f"qemu-img could not create {fmt} volume {path}: "
                                   f"{result.stderr.strip() or result.returncode}", path=path)
            try:
                os.link(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
            except FileExistsError:
                pass
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dirfd)


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
        path = loc.checked_path(storage_domains)  # no link on the way: realpath stays inside
        if os.path.realpath(path) in used:
            raise Conflict(f"volume {path} is a disk of a VM defined on this host; "
                           "remove the VM first", path=path)
        planned.append((loc, path))
    results = []
    for loc, path in planned:
        existed = loc.unlink(storage_domains)
        with contextlib.suppress(OSError):  # not empty (other volumes), gone, not a directory
            with paths.parent(loc.root(storage_domains), loc.image, "volume") as (root, name):
                os.rmdir(name, dir_fd=root)
        results.append({"domain": loc.domain, "image": loc.image, "volume": loc.volume,
                        "path": path, "deleted": existed})
    return results


def _image(fmt: str, fd: int) -> str:
    """qemu-img's name for the open volume ``fd``: its format pinned (never probed)
    and no backing file opened, whatever the image header says."""
    if fmt not in FORMATS:
        raise InvalidSpec("volume.format", f"'{fmt}' is not one of {FORMATS}")
    return "json:" + json.dumps({"driver": fmt, "backing": None,
                                 "file": {"driver": "file", "filename": paths.fd_path(fd)}})


def _virtual_size_mib(fd: int, fmt: str, path: str) -> int:
    result = subprocess.run(["qemu-img", "info", "--output=json", "-U", _image(fmt, fd)],
                            pass_fds=(fd,), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KestrelError(f"qemu-img cannot read volume {path}: "
                           f"{result.stderr.strip() or result.returncode}", path=path)
    return json.loads(result.stdout)["virtual-size"] // (1024 * 1024)


def virtual_size_mib(location: VolumeLocation, storage_domains: dict[str, str],
                     fmt: str) -> int:
    fd = location.open(storage_domains)
    try:
        return _virtual_size_mib(fd, fmt, location.path(storage_domains))
    finally:
        os.close(fd)


def grow(location: VolumeLocation, storage_domains: dict[str, str], fmt: str,
         size_mib: int) -> dict:
    """Grow a volume no running domain uses to ``size_mib``; never shrink.

    A missing file is left alone: ``prepare`` creates it at its full size at
    the VM's next start. qemu-img's image lock refuses a file QEMU has open.
    """
    if fmt not in FORMATS:
        raise InvalidSpec("volume.format", f"'{fmt}' is not one of {FORMATS}")
    path = location.path(storage_domains)
    try:
        fd = location.open(storage_domains, os.O_RDWR)
    except FileNotFoundError:
        return {"path": path, "resized": False, "exists": False, "size_mib": None}
    try:
        current = _virtual_size_mib(fd, fmt, path)
        if current >= size_mib:
            return {"path": path, "resized": False, "exists": True, "size_mib": current}
        result = subprocess.run(["qemu-img", "resize", "-q", _image(fmt, fd), f"{size_mib}M"],
                                pass_fds=(fd,), capture_output=True, text=True, check=False)
    finally:
        os.close(fd)
    if result.returncode != 0:
        raise KestrelError(f"qemu-img could not grow volume {path} to {size_mib} MiB: "
                           f"{result.stderr.strip() or result.returncode}", path=path)
    return {"path": path, "resized": True, "exists": True, "size_mib": size_mib}
