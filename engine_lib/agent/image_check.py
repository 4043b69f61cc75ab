"""Checks of an untrusted image file (an upload or a download) before it becomes a volume.

The file's bytes are the uploader's, so nothing in it may choose what the
root-run agent opens: the format is read from the header's magic here (qemu-img
never probes), a qcow2 naming a backing file or an external data file and a
vmdk descriptor (whose extents are other files) are refused before qemu-img
opens anything, and every qemu-img run on the file is given the format pinned
and ``backing: null`` in a json: name, under prlimit (1 GiB address space, 30 s
CPU) so a crafted header cannot exhaust the host. ``qemu-img info`` and
``qemu-img check`` then confirm: no backing, no data file, vmdk extents that are
the file itself, no corruption (a truncated qcow2 shows as clusters past the
end). Errors are InvalidSpec naming the request field (``image_format``,
``length``...), or KestrelError when the host cannot do it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess

from engine_lib.agent import paths
from engine_lib.protocol.errors import InvalidSpec, KestrelError

FORMATS = ("qcow2", "raw", "vmdk", "vdi", "vhdx")
TARGET_FORMATS = ("qcow2", "raw")
ADDRESS_SPACE = 1024 ** 3
CPU_SECONDS = 30
WALL_SECONDS = 120  # an open that blocks uses no CPU
# Room kept free on a domain beyond what the new volume needs (metadata, rounding).
MARGIN_BYTES = 16 * 1024 * 1024
_QCOW2_EXTERNAL_DATA = 1 << 2  # incompatible feature bit: the data lives in another file


def limited(argv: list[str]) -> list[str]:
    """``argv`` under prlimit: a crafted image cannot make qemu-img eat the host."""
    return ["prlimit", f"--as={ADDRESS_SPACE}", f"--cpu={CPU_SECONDS}", "--", *argv]


def pinned(fmt: str, fd: int, backing: dict | None = None) -> str:
    """qemu-img's name for the file open as ``fd``: format pinned, backing as given
    (None: no backing opened, whatever the header says)."""
    return "json:" + json.dumps(spec(fmt, fd, backing))


def spec(fmt: str, fd: int, backing: dict | None = None) -> dict:
    return {"driver": fmt, "backing": backing,
            "file": {"driver": "file", "filename": paths.fd_path(fd)}}


def sniff(fd: int) -> str:
    """The format by its magic (raw when none); a vmdk descriptor, or a qcow2 with a
    backing file or an external data file, is refused here, before qemu-img opens it."""
    head = os.pread(fd, 512, 0)
    if head[:4] == b"QFI\xfb":
        version, = struct.unpack(">I", head[4:8])
        backing_offset, = struct.unpack(">Q", head[8:16])
        if backing_offset:
            length, = struct.unpack(">I", head[16:20])
            name = os.pread(fd, min(length, 1023), backing_offset)
            raise InvalidSpec("image", f"the qcow2 image names a backing file "
                                       f"({name.decode(errors='replace')!r}); an uploaded "
                                       "image must be self-contained (flatten it with "
                                       "qemu-img convert)")
        if version >= 3 and len(head) >= 80:
            features, = struct.unpack(">Q", head[72:80])
            if features & _QCOW2_EXTERNAL_DATA:
                raise InvalidSpec("image", "the qcow2 image keeps its data in an external "
                                           "data file; an uploaded image must be "
                                           "self-contained")
        return "qcow2"
    if head[:4] == b"KDMV":
        capacity, = struct.unpack("<Q", head[12:20])
        if not capacity:  # qemu then reads the extents from an embedded descriptor
            raise InvalidSpec("image", "the vmdk's data is described as other files "
                                       "(extents); upload a single-file vmdk")
        return "vmdk"
    if head.startswith(b"# Disk DescriptorFile"):
        raise InvalidSpec("image", "the image is a vmdk descriptor whose data is in other "
                                   "files (extents); upload a single-file vmdk "
                                   "(monolithicSparse or streamOptimized)")
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if len(head) >= 0x44 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "vdi"
    return "raw"


def _run(argv: list[str], fd: int, what: str) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(limited(argv), pass_fds=(fd,), capture_output=True,
                                text=True, check=False, timeout=WALL_SECONDS)
    except subprocess.TimeoutExpired:
        raise InvalidSpec("image", f"qemu-img {what} did not finish within "
                                   f"{WALL_SECONDS} s on this image") from None
    if result.returncode < 0 or result.returncode in (137, 152):  # killed by a limit
        raise InvalidSpec("image", f"qemu-img {what} exceeded its limits on this image "
                                   f"(1 GiB memory, {CPU_SECONDS} s CPU)")
    return result


def inspect(fd: int, declared: str, content_type: str = "data") -> dict:
    """Check the image open as ``fd``; its ``qemu-img info`` with ``detected_format``.

    ``declared`` is the client's image_format ("" = detect).
    """
    if declared and declared not in FORMATS:
        raise InvalidSpec("image_format", f"'{declared}' is not one of {', '.join(FORMATS)}")
    detected = sniff(fd)
    if declared and declared != detected:
        raise InvalidSpec("image_format", f"the image was declared {declared} but is "
                                          f"{detected}")
    if content_type == "iso" and detected != "raw":
        raise InvalidSpec("content_type", f"an ISO image is a raw file; this one is "
                                          f"{detected}")
    result = _run(["qemu-img", "info", "--output=json", pinned(detected, fd)], fd, "info")
    if result.returncode != 0:
        raise InvalidSpec("image", f"qemu-img cannot read it as {detected}: "
                                   f"{result.stderr.strip() or result.returncode}")
    info = json.loads(result.stdout)
    specific = (info.get("format-specific") or {}).get("data") or {}
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidSpec("image", f"the image names a backing file "
                                   f"({info.get('backing-filename')!r}); it must be "
                                   "self-contained")
    if info.get("encrypted"):
        raise InvalidSpec("image", "the image is encrypted; upload it decrypted")
    if specific.get("data-file"):
        raise InvalidSpec("image", "the image keeps its data in an external data file "
                                   f"({specific['data-file']!r})")
    own = paths.fd_path(fd)
    for extent in specific.get("extents") or []:
        if extent.get("filename") != own:
            raise InvalidSpec("image", f"the vmdk has an extent in another file "
                                       f"({extent.get('filename')!r})")
    _check(fd, detected)
    info["detected_format"] = detected
    return info


def _check(fd: int, fmt: str) -> None:
    """qemu-img check: corruption (a truncated qcow2 included) is refused; leaked
    clusters are harmless and pass; raw has nothing to check."""
    if fmt == "raw":
        return
    result = _run(["qemu-img", "check", "--output=json", pinned(fmt, fd)], fd, "check")
    if result.returncode in (0, 3):
        return
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = {}
    first = next((line for line in result.stderr.splitlines() if line.strip()), "")
    what = (f"{report.get('corruptions', 0)} corruptions, {report.get('check-errors', 0)} "
            f"check errors" if report else "it cannot be checked")
    raise InvalidSpec("image", f"the {fmt} image is truncated or corrupt ({what}"
                               + (f"; {first.strip()}" if first else "") + ")")


def free_bytes(dirfd: int) -> int:
    stats = os.statvfs(paths.fd_path(dirfd))
    return stats.f_bavail * stats.f_frsize


def ensure_space(dirfd: int, needed: int, field: str, what: str) -> None:
    """Refuse before writing when the domain lacks ``needed`` bytes (+ a margin)."""
    free = free_bytes(dirfd)
    if needed + MARGIN_BYTES > free:
        raise InvalidSpec(field, f"{what} needs {_mib(needed)} MiB but the storage domain "
                                 f"has {_mib(free)} MiB free (keeping "
                                 f"{_mib(MARGIN_BYTES)} MiB spare)")


def measure(source: str, fds: tuple[int, ...], target_format: str) -> int:
    """Bytes ``qemu-img convert`` of ``source`` (a pinned json: name) to ``target_format``
    will write at most."""
    result = subprocess.run(limited(["qemu-img", "measure", "--output=json", "-O",
                                     target_format, source]), pass_fds=fds,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KestrelError(f"qemu-img measure failed: "
                           f"{result.stderr.strip() or result.returncode}")
    return int(json.loads(result.stdout)["required"])


def _mib(value: int) -> int:
    return -(-value // (1024 * 1024))
