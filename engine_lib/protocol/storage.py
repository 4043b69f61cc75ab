"""Storage rules both sides apply: NFS export syntax, the mount limit, where domains may live.

NFS domains are mounted only at ``MOUNT_ROOT/<directory>`` (oVirt's
/rhev/data-center/mnt), always ``nosuid,nodev,noexec``: a domain holds disk
images, which QEMU reads and writes but nothing executes, and a set-uid file or
a device node an NFS server (or another host) put there must mean nothing here.
File domains live only under directories an administrator allowed (the
engine's ``engine.conf`` and the agent's ``[storage] file_domain_roots``).
"""

from __future__ import annotations

import re

from engine_lib.protocol.errors import InvalidSpec

# NFS gives up on an unreachable server only after minutes; the agent answers
# before this, and the engine's client waits a little longer than it.
MOUNT_TIMEOUT_S = 60.0
# server:/path; the server a host name or an IPv4/bracketed IPv6 address.
EXPORT_RE = re.compile(r"^(?P<server>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>/[^\x00\s]*)$")
MOUNT_ROOT = "/var/lib/kestrel/mnt"
DEFAULT_FILE_DOMAIN_ROOTS = ("/var/lib/kestrel/storage",)
# Added to every NFS mount, after the domain's own options.
MOUNT_OPTIONS = ("nosuid", "nodev", "noexec")
# Options that would undo those, or make mount do something other than mount the export.
REFUSED_OPTIONS = ("suid", "dev", "exec", "defaults", "bind", "rbind", "move", "remount")


def check_mount_options(field: str, options: str) -> str:
    """Refuse options that would lift nosuid/nodev/noexec or change mount's operation."""
    refused = sorted({o.split("=", 1)[0] for o in options.split(",")} & set(REFUSED_OPTIONS))
    if options and refused:
        raise InvalidSpec(field, f"{', '.join(refused)} cannot be set: storage domains are "
                                 f"always mounted {','.join(MOUNT_OPTIONS)}")
    return options


def _plain_absolute(field: str, path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "" \
            or any(s in (".", "..") for s in path.split("/")) \
            or any(c.isspace() or c == "\x00" for c in path):
        raise InvalidSpec(field, "must be an absolute directory path other than / without "
                                 f"'.', '..' or whitespace (got {path!r})")
    return re.sub("/+", "/", path).rstrip("/")


def mount_point(field: str, path: str, root: str = MOUNT_ROOT) -> str:
    """An NFS domain's mount point: a directory directly under ``root``.

    One level only: a mount point inside another domain's mount could be
    redirected by a link that domain's server planted.
    """
    path = _plain_absolute(field, path)
    parent, _, name = path.rpartition("/")
    if parent != root.rstrip("/"):
        raise InvalidSpec(field, f"must be a directory directly under {root} (an nfs "
                                 f"domain is mounted at {root}/<name>), got {path!r}")
    return path


def default_mount_point(name: str) -> str:
    return f"{MOUNT_ROOT}/{name}"


def check_roots(field: str, roots: object) -> tuple[str, ...]:
    """The administrator's allowed roots: absolute directories other than /."""
    if not isinstance(roots, list | tuple) or not all(isinstance(r, str) for r in roots):
        raise InvalidSpec(field, f"must be a list of absolute directories (got {roots!r})")
    return tuple(_plain_absolute(field, str(root)) for root in roots)


def under_roots(field: str, path: str, roots: tuple[str, ...]) -> str:
    """A file domain's directory, which must be one of ``roots`` or inside one."""
    path = _plain_absolute(field, path)
    if not any(path == root or path.startswith(root + "/") for root in roots):
        raise InvalidSpec(field, f"{path} is not under a directory the administrator "
                                 f"allowed for file storage domains ({', '.join(roots) or 'none'}"
                                 "; file_domain_roots)")
    return path
