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

A volume with a parent (a thin disk on its template's volume, on the same
domain) is created as a qcow2 overlay whose backing name is RELATIVE,
``../<image>/<volume>``, so every host resolves it under its own mount. The
parent is checked through agent.paths and read for its size, never written;
qemu-img is told not to open the backing name itself (``-u``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from dataclasses import dataclass

from engine_lib.agent import image_check, paths
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
    that must exist, a disk's own or one of its chain) changes nothing.
    """
    planned = []
    for ref in refs:
        where = f"volume '{ref.alias or ref.volume}'"
        if ref.format not in FORMATS:
            raise InvalidSpec(f"{where}.format", f"'{ref.format}' is not one of {FORMATS}")
        if ref.alias and ref.size_mib <= 0:
            raise InvalidSpec(f"{where}.size_mib", f"{ref.size_mib} is not a positive size")
        location = VolumeLocation(ref.domain, ref.image, ref.volume)
        parent = _parent(ref, where)
        # Also refuses a link (or a link on the way) where the volume should be.
        exists = location.exists(storage_domains)
        disk = f"disk '{ref.disk}'" if ref.disk else where
        if not exists and not (ref.create and ref.alias):
            path = location.path(storage_domains)
            why = ("its volume", "; the disk has run before, so it is not created again as a "
                   "blank disk") if ref.alias else ("its backing volume", "")
            raise Conflict(f"{disk}: {why[0]} {path} is missing on storage domain "
                           f"'{ref.domain}' (not mounted on this host, or removed){why[1]}",
                           disk=ref.disk, alias=ref.alias, path=path)
        if not exists and parent is not None and not parent.exists(storage_domains):
            path = parent.path(storage_domains)
            raise Conflict(f"{disk}: its backing volume {path} is missing on storage domain "
                           f"'{ref.domain}'; the overlay is not created", disk=ref.disk,
                           alias=ref.alias, path=path)
        planned.append((ref, location, parent, exists))
    created = []
    for ref, location, parent, exists in planned:
        if exists:
            continue
        if parent is None:
            _create(location, ref.format, [f"{ref.size_mib}M"], storage_domains)
        else:
            _create(location, ref.format, _overlay_args(ref, parent, storage_domains),
                    storage_domains)
        created.append(location.path(storage_domains))
    return created


def create_overlay(location: VolumeLocation, parent: VolumeLocation, parent_format: str,
                   size_mib: int, storage_domains: dict[str, str]) -> str:
    """A new qcow2 volume over ``parent`` (a snapshot's new top, a reverted disk's empty
    top): never over an existing file, and only on a parent that is there."""
    if parent.domain != location.domain:
        raise InvalidSpec("parent.domain", f"'{parent.domain}': an overlay's backing volume "
                                           f"is on its own storage domain '{location.domain}'")
    if parent_format not in FORMATS:
        raise InvalidSpec("parent.format", f"'{parent_format}' is not one of {FORMATS}")
    path = location.checked_path(storage_domains)
    if location.exists(storage_domains):
        raise Conflict(f"volume {path} already exists; it is not overwritten", path=path)
    if not parent.exists(storage_domains):
        missing = parent.path(storage_domains)
        raise Conflict(f"backing volume {missing} is missing on storage domain "
                       f"'{parent.domain}'; the overlay is not created", path=missing)
    ref = VolumeRef(alias="", domain=location.domain, image=location.image,
                    volume=location.volume, format="qcow2", size_mib=size_mib,
                    parent=parent.relpath, parent_format=parent_format)
    _create(location, "qcow2", _overlay_args(ref, parent, storage_domains), storage_domains)
    return path


def _parent(ref: VolumeRef, where: str) -> VolumeLocation | None:
    """The backing volume a ref names, on its own domain (checked, not opened)."""
    if not ref.parent:
        return None
    image, _, volume = ref.parent.partition("/")
    parent = VolumeLocation(ref.domain, image, volume)
    try:
        relpath = parent.relpath
    except InvalidSpec:
        relpath = ""
    if relpath != ref.parent:
        raise InvalidSpec(f"{where}.parent", f"'{ref.parent}' is not <image>/<volume>")
    if ref.parent_format not in FORMATS:
        raise InvalidSpec(f"{where}.parent_format",
                          f"'{ref.parent_format}' is not one of {FORMATS}")
    if ref.format != "qcow2":
        raise InvalidSpec(f"{where}.format", f"'{ref.format}': only a qcow2 volume has a "
                                             "backing volume")
    return parent


def _overlay_args(ref: VolumeRef, parent: VolumeLocation,
                  storage_domains: dict[str, str]) -> list[str]:
    """qemu-img create's arguments for an overlay on ``parent``: the backing named
    relative to the overlay's directory, its format pinned, and a size of the parent's
    (read through a checked descriptor) or the ref's, whichever is larger."""
    fd = parent.open(storage_domains)
    try:
        parent_bytes = _virtual_size(fd, ref.parent_format, parent.path(storage_domains))
    finally:
        os.close(fd)
    size = max(parent_bytes, ref.size_mib * 1024 * 1024)
    return ["-u", "-b", f"../{parent.relpath}", "-F", ref.parent_format, str(size)]


def create_file(location: VolumeLocation, fmt: str, args: list[str],
                storage_domains: dict[str, str]) -> None:
    """Make a volume file with ``qemu-img create`` (see _create); for other agent modules."""
    _create(location, fmt, args, storage_domains)


def _create(location: VolumeLocation, fmt: str, args: list[str],
            storage_domains: dict[str, str]) -> None:
    """Make the volume with ``qemu-img create -f fmt <file> *args`` (size last)."""
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
            *options, size = args
            result = subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *options,
                                     paths.fd_path(fd), size], pass_fds=(fd,),
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
    return image_check.pinned(fmt, fd)


def _virtual_size_mib(fd: int, fmt: str, path: str) -> int:
    return _virtual_size(fd, fmt, path) // (1024 * 1024)


def _virtual_size(fd: int, fmt: str, path: str) -> int:
    """The open volume's virtual size in bytes (its backing never opened)."""
    result = subprocess.run(["qemu-img", "info", "--output=json", "-U", _image(fmt, fd)],
                            pass_fds=(fd,), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KestrelError(f"qemu-img cannot read volume {path}: "
                           f"{result.stderr.strip() or result.returncode}", path=path)
    size: int = json.loads(result.stdout)["virtual-size"]
    return size


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
