"""A cgroup subtree per lab host.

Two libvirtds on one machine both place their first VM at /machine/qemu-1-<name>
of whatever cgroup root they see, and clash. So every lab host gets its own
directory in every hierarchy (under the caller's current cgroup) and a cgroup
namespace rooted there: each libvirtd then sees a machine of its own.
Everything started in a host is first moved into its directories, which also
gives ``down`` a complete list of the host's processes, QEMU included.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from kestrel_lab.errors import LabError

CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and where the calling process sits in it."""

    mountpoint: str  # /sys/fs/cgroup/cpu
    fstype: str  # cgroup | cgroup2
    options: tuple[str, ...]  # ("cpu",), ("none", "name=systemd"); () for cgroup2
    current: str  # our cgroup relative to mountpoint: "" or "process_api/b095…"


def hierarchies() -> list[Hierarchy]:
    """The cgroup hierarchies mounted under /sys/fs/cgroup (v1, v2 or hybrid)."""
    found = []
    mounts = _cgroup_mounts()
    with open("/proc/self/cgroup", encoding="utf-8") as cgroup:
        for line in cgroup:
            _, controllers, current = line.rstrip("\n").split(":", 2)
            wanted = set(controllers.split(",")) if controllers else set()
            for mountpoint, fstype, root, superoptions in mounts:
                if (fstype == "cgroup2") != (not wanted) or not wanted <= superoptions:
                    continue
                if root != "/" and (current + "/").startswith(root + "/"):
                    current = current[len(root):]
                options = tuple(sorted(wanted))
                if any(o.startswith("name=") for o in options):
                    options = ("none", *options)
                found.append(Hierarchy(mountpoint, fstype, options, current.strip("/")))
                break
    return found


def _cgroup_mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mountpoint, fstype, root, super options) of each cgroup mount under /sys/fs/cgroup."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            separator = fields.index("-")
            fstype = fields[separator + 1]
            if fstype in ("cgroup", "cgroup2") and fields[4].startswith(CGROUP_ROOT + "/"):
                mounts.append((fields[4], fstype, fields[3], set(fields[separator + 3].split(","))))
    return mounts


def create(group: str) -> list[str]:
    """Create ``group`` under our cgroup in every hierarchy; return the directories."""
    directories = []
    for hierarchy in hierarchies():
        parent = os.path.join(hierarchy.mountpoint, hierarchy.current)
        directory = os.path.join(parent, group)
        try:
            os.makedirs(directory, exist_ok=True)
            if "cpuset" in hierarchy.options:
                # cgroup v1 cpusets start empty and then accept no process.
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    _copy_knob(parent, directory, knob)
        except OSError as exc:
            raise LabError(f"cannot create cgroup {directory}: {exc}") from exc
        directories.append(directory)
    return directories


def _copy_knob(parent: str, child: str, knob: str) -> None:
    with open(os.path.join(child, knob), encoding="ascii") as current:
        if current.read().strip():
            return
    with open(os.path.join(parent, knob), encoding="ascii") as source:
        value = source.read().strip()
    with open(os.path.join(child, knob), "w", encoding="ascii") as target:
        target.write(value)


def procs_files(directories: list[str]) -> list[str]:
    """The cgroup.procs files a process writes its PID into to join the group."""
    return [os.path.join(directory, "cgroup.procs") for directory in directories]


def pids(directories: list[str]) -> set[int]:
    """Every process in the groups or any group below them."""
    found: set[int] = set()
    for directory in directories:
        for path, _, _ in os.walk(directory):
            try:
                with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as procs:
                    found.update(int(pid) for pid in procs.read().split())
            except FileNotFoundError:
                continue
    return found


def remove(directories: list[str], busy_timeout: float = 15.0) -> None:
    """Remove the groups and everything libvirt made below them (deepest first)."""
    deadline = time.monotonic() + busy_timeout
    for directory in directories:
        if not os.path.isdir(directory):
            continue
        for path, _, _ in sorted(os.walk(directory), key=lambda entry: -entry[0].count("/")):
            _rmdir_when_empty(path, deadline)


def _rmdir_when_empty(path: str, deadline: float) -> None:
    """A group stays busy until its last killed process has finished exiting (a QEMU
    still unmapping guest memory on a loaded machine): wait for that, then give up."""
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            left = sorted(pids([path]))
            still = f" (processes {left} still in it)" if left else ""
            raise LabError(f"cannot remove cgroup {path}: {exc}{still}") from exc


def mount_argvs(target: str = CGROUP_ROOT) -> list[list[str]]:
    """Commands that remount every hierarchy under ``target``.

    Run inside a host's cgroup namespace, each mount shows the host's group as
    its root, exactly as a separate machine would see its own cgroups.
    """
    argvs = [["mount", "-t", "tmpfs", "-o", "mode=0755", "cgroup", target]]
    for hierarchy in hierarchies():
        mountpoint = os.path.join(target, os.path.relpath(hierarchy.mountpoint, CGROUP_ROOT))
        argvs.append(["mkdir", "-p", mountpoint])
        mount = ["mount", "-t", hierarchy.fstype]
        if hierarchy.options:
            mount += ["-o", ",".join(hierarchy.options)]
        argvs.append(mount + [hierarchy.fstype, mountpoint])
    return argvs
