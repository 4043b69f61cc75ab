"""A BIOS-bootable disk image made without mounting anything.

Layout (MBR, so SeaBIOS boots it on q35 and pc machines alike)::

    sector 0      syslinux's mbr.bin + partition table
    partition 1   FAT, active: syslinux (ldlinux.sys), syslinux.cfg, vmlinuz, initrd.img
    partition 2   ext4 root filesystem, made by ``mke2fs -d`` from a directory (optional)

FAT because syslinux installs into a FAT image file through mtools: no loop
device, no mount, no root-only kernel feature is needed to build the disk.
Partition 2 is the last one, so cloud-init's growpart can grow it in place.
"""

from __future__ import annotations

import os
import shutil

from kestrel_lab.errors import GuestBuildError, LabError
from kestrel_lab.process import run

MIB = 1024 * 1024
MBR_CODE = "/usr/lib/syslinux/mbr/mbr.bin"
MBR_CODE_BYTES = 440  # the rest of sector 0 is the partition table
FIRST_PARTITION_MIB = 1
CHUNK = 4 * MIB
# What ``make_disk`` runs; the Makefile's deps install them.
TOOLS = {"syslinux": "syslinux", "mcopy": "mtools", "mkfs.vfat": "dosfstools",
         "sfdisk": "fdisk", "mke2fs": "e2fsprogs", "qemu-img": "qemu-utils"}


def syslinux_config(cmdline: str) -> str:
    """Boot the one kernel at once: no menu, no prompt, no timeout."""
    return ("DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\n"
            f"LABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {cmdline}\n")


def make_disk(work: str, output: str, *, kernel: str, initrd: str, cmdline: str,
              boot_mib: int, root_dir: str = "", root_mib: int = 0, root_uuid: str = "") -> None:
    """Write a compressed qcow2 boot disk to ``output`` (scratch files go in ``work``)."""
    _check_tools()
    boot = os.path.join(work, "boot.fat")
    _make_boot_partition(boot, boot_mib, kernel, initrd, cmdline)
    partitions = [(boot, boot_mib, "c", True)]
    if root_dir:
        root = os.path.join(work, "root.ext4")
        _make_root_partition(root, root_mib, root_dir, root_uuid)
        partitions.append((root, root_mib, "83", False))
    raw = os.path.join(work, "disk.raw")
    total_mib = FIRST_PARTITION_MIB + sum(size for _, size, _, _ in partitions)
    with open(raw, "wb") as disk:
        disk.truncate(total_mib * MIB)
    table = ["label: dos"]
    start = FIRST_PARTITION_MIB
    for _, size, kind, active in partitions:
        table.append(f"start={start * 2048}, size={size * 2048}, type={kind}"
                     + (", bootable" if active else ""))
        start += size
    _run(["sfdisk", "--quiet", raw], input="\n".join(table) + "\n")
    with open(MBR_CODE, "rb") as mbr:
        code = mbr.read(MBR_CODE_BYTES)
    with open(raw, "r+b") as disk:
        disk.write(code)
        start = FIRST_PARTITION_MIB
        for path, size, _, _ in partitions:
            _copy_sparse(path, disk, start * MIB)
            os.unlink(path)
            start += size
    _run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, output])
    os.unlink(raw)


def _check_tools() -> None:
    missing = sorted({package for tool, package in TOOLS.items() if not shutil.which(tool)})
    if not os.path.isfile(MBR_CODE):
        missing.append("syslinux-common")
    if missing:
        raise GuestBuildError(f"cannot build a boot disk: install {' '.join(missing)} "
                              "(scripts/install-system-deps.sh)")


def _make_boot_partition(path: str, size_mib: int, kernel: str, initrd: str,
                         cmdline: str) -> None:
    config = os.path.join(os.path.dirname(path), "syslinux.cfg")
    with open(config, "w") as out:
        out.write(syslinux_config(cmdline))
    _run(["mkfs.vfat", "-n", "BOOT", "-C", path, str(size_mib * 1024)])
    for source, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (config, "syslinux.cfg")):
        _run(["mcopy", "-i", path, source, f"::/{name}"])
    _run(["syslinux", "--install", path])


def _make_root_partition(path: str, size_mib: int, root_dir: str, uuid: str) -> None:
    # Ownership, modes, device nodes and extended attributes come from root_dir.
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-U", uuid, "-d", root_dir,
          path, f"{size_mib}M"])


def _copy_sparse(source: str, disk, offset: int) -> None:
    """Copy ``source`` into ``disk`` at ``offset``, leaving all-zero chunks as holes."""
    zero = bytes(CHUNK)
    with open(source, "rb") as src:
        position = offset
        while chunk := src.read(CHUNK):
            if chunk != zero[:len(chunk)]:
                disk.seek(position)
                disk.write(chunk)
            position += len(chunk)


def _run(argv: list[str], **kwargs) -> None:
    try:
        run(argv, **kwargs)
    except LabError as exc:
        raise GuestBuildError(f"building a boot disk: {exc.message}") from exc
