"""Connecting NFS storage domains on this host (VDSM's connectStorageServer).

The engine asks the agent to mount a domain's export at the domain's path when
the host comes Up or the domain is attached to the host's cluster; the agent
then registers the domain in its running config, so placeholder paths of VM
disks on it resolve. Registrations live in memory only: the engine connects
again whenever the host comes Up, and a mount that is already there is taken
as it is (read from /proc/self/mountinfo, never by calling mount blindly).

Mount points are directories directly under the fixed mount root
(engine_lib.protocol.storage.MOUNT_ROOT), made here without following links,
and every mount is ``nosuid,nodev,noexec``; a mount found without those is
remounted with them before the domain is used.

``mount`` and ``umount`` run as argv lists (no shell), found on PATH.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import threading
from collections.abc import Callable
from typing import NamedTuple

from engine_lib.agent import paths
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.storage import (
    EXPORT_RE,
    MOUNT_OPTIONS,
    MOUNT_ROOT,
    MOUNT_TIMEOUT_S,
    check_mount_options,
    mount_point,
)

MOUNTINFO = "/proc/self/mountinfo"
TYPES = ("nfs",)
# "vers=4.2,soft,timeo=600": words, key=value pairs, nothing a shell or mount could misread.
OPTIONS_RE = re.compile(r"^[A-Za-z0-9_.:=-]+(,[A-Za-z0-9_.:=-]+)*$")
_NFS_FSTYPES = ("nfs", "nfs4")


class MountFailed(KestrelError):
    """mount or umount refused; the message carries its stderr."""

    code = "MountFailed"
    http_status = 502


class Mount(NamedTuple):
    fstype: str
    source: str
    options: frozenset[str]  # the mount point's own (per-mount) options


def check_request(body: dict, mount_root: str = MOUNT_ROOT) -> dict:
    """The connect request's fields, checked; InvalidSpec names the field."""
    name = body.get("name")
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") \
            or any(c.isspace() or c == "\x00" for c in name):
        raise InvalidSpec("name", f"{name!r} is not a valid storage domain name")
    kind = body.get("type", "nfs")
    if kind not in TYPES:
        raise InvalidSpec("type", f"{kind!r} is not one of {list(TYPES)}")
    export = body.get("export")
    if not isinstance(export, str) or not EXPORT_RE.match(export):
        raise InvalidSpec("export", f"must be an NFS export 'server:/path' (got {export!r})")
    options = body.get("options") or ""
    if not isinstance(options, str) or len(options) > 512 or \
            (options and not OPTIONS_RE.match(options)):
        raise InvalidSpec("options", "must be a comma-separated list of mount options "
                          "(letters, digits and _ . : = -; no spaces), got "
                          f"{options!r}")
    check_mount_options("options", options)
    path = mount_point("path", body.get("path"), mount_root)
    return {"name": name, "type": kind, "export": export, "options": options, "path": path}


def mounts(mountinfo: str = MOUNTINFO) -> dict[str, Mount]:
    """Mount point -> Mount, the last mount on each point winning."""
    found: dict[str, Mount] = {}
    with open(mountinfo, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if "-" not in fields:
                continue
            dash = fields.index("-")
            if dash < 5 or len(fields) < dash + 3:
                continue
            found[_unescape(fields[4])] = Mount(fields[dash + 1], _unescape(fields[dash + 2]),
                                                frozenset(fields[5].split(",")))
    return found


def _unescape(value: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), value)


class StorageConnections:
    """Mounts and registrations of the domains the engine connected on this host.

    ``domains`` is the agent config's name -> path map, shared with the
    hypervisor (placeholder resolution reads it); it is changed in place.
    """

    def __init__(self, domains: dict[str, str], mountinfo: str = MOUNTINFO,
                 mount_root: str = MOUNT_ROOT):
        self.domains = domains
        self.mountinfo = mountinfo
        self.mount_root = mount_root
        self._static = dict(domains)  # from agent.conf: never mounted or unmounted here
        self._connected: dict[str, str] = {}
        self._failures: dict[str, dict] = {}
        self._lock = threading.Lock()

    def connect(self, body: dict) -> dict:
        request = check_request(body, self.mount_root)
        name, path, export = request["name"], request["path"], request["export"]
        with self._lock:
            configured = self.domains.get(name)
            if configured is not None and configured != path:
                raise Conflict(f"storage domain '{name}' is held at {configured} on this host, "
                               f"not at {path}", name=name, path=configured)
            current = mounts(self.mountinfo).get(path)
            if current is not None and not _same_export(current, export):
                raise Conflict(f"{path} has {current.source} ({current.fstype}) mounted, "
                               f"not {export}", name=name, path=path, mounted=current.source)
            missing = [] if current is None else \
                [o for o in MOUNT_OPTIONS if o not in current.options]
            changed = current is None or bool(missing)
            if changed:
                try:
                    if current is None:
                        self._mount(request)
                    else:  # mounted before (by hand, an older agent): lock it down first
                        _run(["mount", "-o", ",".join(["remount", *MOUNT_OPTIONS]), "--", path],
                             f"remount {path} {','.join(missing)} for storage domain '{name}'")
                except KestrelError as exc:
                    self._failures[name] = {"name": name, "path": path, "available": False,
                                            "error": exc.message}
                    raise
            self._failures.pop(name, None)
            if name not in self._static:
                self._connected[name] = path
            self.domains[name] = path
            return {"name": name, "path": path, "mounted": True, "changed": changed}

    def disconnect(self, name: str, disks_in_use: Callable[[], set[str]]) -> dict:
        """Unmount a domain the engine connected; 409 while a VM here uses a volume on it."""
        if not isinstance(name, str) or not name:
            raise InvalidSpec("name", "a storage domain name is required")
        with self._lock:
            if name in self._static:
                raise Conflict(f"storage domain '{name}' is configured in the agent's config "
                               f"({self._static[name]}); it is not disconnected on request",
                               name=name)
            self._failures.pop(name, None)
            path = self._connected.get(name)
            if path is None:
                return {"name": name, "path": None, "mounted": False, "changed": False}
            root = os.path.realpath(path)
            users = sorted(p for p in disks_in_use()
                           if os.path.commonpath([root, os.path.realpath(p)]) == root)
            if users:
                raise Conflict(f"storage domain '{name}' holds disks of VMs on this host "
                               f"({', '.join(users)}); stop or migrate them first",
                               name=name, disks=users)
            mounted = path in mounts(self.mountinfo)
            if mounted:
                _run(["umount", "--", path], f"unmount storage domain '{name}' from {path}")
            del self._connected[name]
            self.domains.pop(name, None)
            return {"name": name, "path": path, "mounted": False, "changed": True}

    def failures(self) -> list[dict]:
        """Domains whose last connect failed, as host facts report unavailable domains."""
        with self._lock:
            return [dict(entry) for name, entry in sorted(self._failures.items())
                    if name not in self.domains]

    def _mount(self, request: dict) -> None:
        self._make_mount_point(request["path"])
        options = ",".join([o for o in [request["options"]] if o] + list(MOUNT_OPTIONS))
        argv = ["mount", "-t", "nfs", "-o", options, "--", request["export"], request["path"]]
        _run(argv, f"mount {request['export']} at {request['path']} for storage domain "
                   f"'{request['name']}'")


    def _make_mount_point(self, path: str) -> None:
        """The mount point, a real directory under the mount root (mount would follow a link)."""
        os.makedirs(self.mount_root, mode=0o755, exist_ok=True)
        with paths.parent(self.mount_root, os.path.basename(path), "path") as (dirfd, name):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=dirfd)
            st = paths.lstat(dirfd, name)
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise InvalidSpec("path", f"{path} is not a directory (a symlink or a file is "
                                          "never mounted over)")


def _same_export(current: Mount, export: str) -> bool:
    return current.fstype in _NFS_FSTYPES and current.source.rstrip("/") == export.rstrip("/")


def _run(argv: list[str], what: str) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                timeout=MOUNT_TIMEOUT_S)
    except FileNotFoundError:
        raise MountFailed(f"cannot {what}: '{argv[0]}' is not installed on this host",
                          argv=argv) from None
    except subprocess.TimeoutExpired:
        raise MountFailed(f"cannot {what}: {argv[0]} did not finish within "
                          f"{MOUNT_TIMEOUT_S:g} s", argv=argv) from None
    if result.returncode != 0:
        raise MountFailed(f"cannot {what}: {argv[0]} exited {result.returncode}: "
                          f"{result.stderr.strip() or '(no message)'}", argv=argv,
                          stderr=result.stderr.strip(), returncode=result.returncode)
