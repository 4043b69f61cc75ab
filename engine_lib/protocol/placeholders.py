"""Host placeholders: the vocabulary the engine writes and the agent resolves.

The engine must not know host paths, yet every XML it emits must validate
against libvirt's schema. So a placeholder for a file is itself an absolute
path under a reserved prefix:

    /kestrel-placeholder/storage/<domain>/<relative path>   file on a storage domain
    /kestrel-placeholder/channels/<vm id>.<channel name>     channel socket
    /kestrel-placeholder/payload/<vm id>.iso                 cloud-init payload ISO
    /kestrel-placeholder/console/<vm id>.log                 serial console log
    /kestrel-placeholder/nvram/<vm id>.fd                    UEFI variable store
    /kestrel-placeholder/lun/<name>                          a LUN the engine registered

A LUN placeholder resolves through the <kestrel:lun> entries of the domain's
metadata (the engine writes them from its registry), never through a path a
user wrote.

Shared by engine and agent; standard library only.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from engine_lib.protocol.errors import InvalidSpec

PREFIX = "/kestrel-placeholder"
KINDS = ("storage", "channels", "payload", "console", "nvram", "lun")


@dataclass(frozen=True)
class Placeholder:
    kind: str
    # For "storage": the storage domain name; otherwise empty.
    domain: str
    # Path relative to the kind's root (or to the storage domain's root).
    relpath: str


def _check_segment(field: str, value: str | None) -> str:
    if not value or "/" in value or value in (".", "..") or "\x00" in value:
        raise InvalidSpec(field, f"'{value}' is not a valid path segment")
    return value


def _check_relpath(field: str, relpath: str) -> str:
    norm = posixpath.normpath(relpath)
    if not relpath or relpath.startswith("/") or norm.startswith("..") or "\x00" in relpath:
        raise InvalidSpec(field, f"'{relpath}' must be a relative path inside its root")
    return norm


def storage(domain: str, relpath: str) -> str:
    """A file on a storage domain, e.g. a disk volume or a kernel image."""
    _check_segment("storage_domain", domain)
    return f"{PREFIX}/storage/{domain}/{_check_relpath('path', relpath)}"


def channel(vm_id: str, name: str | None) -> str:
    """A channel's socket; a channel without a name is refused like a bad one."""
    return f"{PREFIX}/channels/{_check_segment('vm_id', vm_id)}.{_check_segment('channel', name)}"


def payload(vm_id: str) -> str:
    return f"{PREFIX}/payload/{_check_segment('vm_id', vm_id)}.iso"


def console_log(vm_id: str) -> str:
    return f"{PREFIX}/console/{_check_segment('vm_id', vm_id)}.log"


def nvram(vm_id: str) -> str:
    return f"{PREFIX}/nvram/{_check_segment('vm_id', vm_id)}.fd"


def lun(name: str) -> str:
    """A registered LUN, by its registered name."""
    return f"{PREFIX}/lun/{_check_segment('lun', name)}"


def is_placeholder(value: str) -> bool:
    return value.startswith(PREFIX + "/")


def parse(value: str) -> Placeholder:
    """Split a placeholder path into its parts; raises InvalidSpec if malformed."""
    if not is_placeholder(value):
        raise InvalidSpec("placeholder", f"'{value}' does not start with {PREFIX}/")
    rest = value[len(PREFIX) + 1:]
    kind, _, tail = rest.partition("/")
    if kind not in KINDS:
        raise InvalidSpec("placeholder", f"unknown placeholder kind '{kind}' in '{value}'")
    if kind == "storage":
        domain, _, relpath = tail.partition("/")
        return Placeholder(kind, _check_segment("storage_domain", domain),
                           _check_relpath("placeholder", relpath))
    if kind == "lun":
        return Placeholder(kind, "", _check_segment("lun", tail))
    return Placeholder(kind, "", _check_relpath("placeholder", tail))


def resolve(value: str, roots: dict[str, str], storage_domains: dict[str, str],
            luns: dict[str, str] | None = None) -> str:
    """Turn a placeholder into a real host path.

    ``roots`` maps each non-storage kind to a directory; ``storage_domains``
    maps domain names to their mount points; ``luns`` the registered LUNs the
    engine sent (name -> device path). An unknown storage domain or LUN is an
    error naming it: the VM cannot start on a host that lacks it.
    """
    ph = parse(value)
    if ph.kind == "lun":
        try:
            return (luns or {})[ph.relpath]
        except KeyError:
            raise InvalidSpec("lun", f"LUN '{ph.relpath}' is not registered by the "
                                     "engine") from None
    if ph.kind == "storage":
        try:
            root = storage_domains[ph.domain]
        except KeyError:
            raise InvalidSpec("storage_domain",
                              f"storage domain '{ph.domain}' is not attached to this host") from None
    else:
        root = roots[ph.kind]
    return posixpath.join(root, ph.relpath)
