"""Host paths the agent hands to libvirt, checked where they are on this host.

libvirt relabels and QEMU opens whatever path a domain names, as the guest's
disk, CD or kernel. So a file must really be inside the directory it was
resolved under (symlinks followed, the way QEMU will follow them) and a LUN
must really be a block device: a link in a storage domain pointing at
/etc/shadow, or a registered "LUN" that is /dev/mem, is refused here.
"""

from __future__ import annotations

import os
import stat

from engine_lib.protocol.errors import InvalidSpec


def confine(path: str, root: str, field: str) -> str:
    """``path`` with every link resolved; InvalidSpec when that leaves ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise InvalidSpec(field, f"{path} resolves to {real}, outside {root}")
    return real


def block_device(path: str, field: str) -> str:
    """A LUN's device path: it must resolve to a block device under /dev."""
    real = os.path.realpath(path)
    if os.path.commonpath(["/dev", real]) != "/dev":
        raise InvalidSpec(field, f"{path} resolves to {real}, outside /dev")
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise InvalidSpec(field, f"{path} cannot be used: {exc.strerror}") from None
    if not stat.S_ISBLK(mode):
        raise InvalidSpec(field, f"{path} ({real}) is not a block device")
    return path
