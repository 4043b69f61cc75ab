"""The tiny test guest (kestrel_lab.guest) as a bootable disk image, cached.

    from kestrel_lab.guest_disk import tiny_disk_image
    path = tiny_disk_image(state_dir)   # <state>/images/tiny-guest-<recipe hash>.qcow2

The same kernel and busybox initramfs, booted by syslinux from a small disk
(``VIRTUAL_SIZE_MIB``) with the command line ``KERNEL_CMDLINE``, for tests of
disks that boot with no ``<kernel>`` from the engine. It behaves as with a
passed kernel: prints ``kestrel-guest: up <release>`` (``READY_LINE``) on
ttyS0, runs the guest agent when the VM has its channel. The boot disk itself
is one of the disks it lists. ``kestrel-lab image tiny`` prints the path.
"""

from __future__ import annotations

import os

from kestrel_lab import bootdisk, guest, image_cache

VIRTUAL_SIZE_MIB = 48
KERNEL_CMDLINE = "console=ttyS0"
READY_LINE = "kestrel-guest: up"
BUILD_VERSION = "1"


def recipe() -> str:
    """The guest's own recipe and how the disk is laid out: the cache key."""
    return image_cache.recipe_hash((BUILD_VERSION, guest.recipe(), str(VIRTUAL_SIZE_MIB),
                                    bootdisk.syslinux_config(KERNEL_CMDLINE)))


def image_path(state_dir: str) -> str:
    return os.path.join(image_cache.images_dir(state_dir), f"tiny-guest-{recipe()}.qcow2")


def tiny_disk_image(state_dir: str) -> str:
    """Path of the tiny guest's boot disk (qcow2), built first when missing."""
    return image_cache.cached(image_path(state_dir), _build)


def _build(work: str, output: str) -> None:
    kernel, initrd = guest.build(os.path.join(work, "guest"))
    bootdisk.make_disk(work, output, kernel=kernel, initrd=initrd, cmdline=KERNEL_CMDLINE,
                       boot_mib=VIRTUAL_SIZE_MIB - bootdisk.FIRST_PARTITION_MIB)
