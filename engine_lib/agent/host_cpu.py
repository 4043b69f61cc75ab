"""This host's CPU use: the busy share of its CPUs since the previous sample.

Two sources (agent.conf ``[statistics] cpu_accounting``):

``node`` (default): libvirt's ``getCPUStats`` for all CPUs, the machine's own
counters (/proc/stat). Right wherever the agent owns the machine.

``cgroup``: the CPU time of the cgroup the agent sees as its root, per wall time
and per CPU the host may use. Right where several hosts share one machine (the
lab: each lab host is a cgroup namespace rooted at its own subtree, which holds
its libvirtd and every QEMU it starts), where the node figures would show every
host the load of all of them.

As with VM CPU, the first sample of a fresh source has nothing to compare with
and reports None.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from engine_lib.agent.config import AgentConfig
from engine_lib.protocol.errors import InvalidSpec

CGROUP_ROOT = "/sys/fs/cgroup"
# Where the root cgroup's CPU time is: cgroup v1 cpuacct (alone or co-mounted with
# cpu) in nanoseconds, else cgroup v2 (unified alone, or hybrid) in microseconds.
_V1_USAGE = ("cpuacct/cpuacct.usage", "cpu,cpuacct/cpuacct.usage", "cpuacct,cpu/cpuacct.usage")
_V2_STAT = ("cpu.stat", "unified/cpu.stat")


class HostCpu(Protocol):
    def percent(self) -> float | None:
        """Busy share (0-100) of this host's CPUs since the last call; None on the first."""
        ...


def _percent(busy: float, total: float) -> float | None:
    if total <= 0:
        return None
    return round(max(0.0, min(100.0, 100.0 * busy / total)), 2)


class NodeCpu:
    """From the node's cumulative CPU times (libvirt's user, kernel, idle, iowait)."""

    def __init__(self, read: Callable[[], Mapping[str, int]]):
        self._read = read
        self._lock = threading.Lock()
        self._previous: tuple[int, int] | None = None  # (busy ns, total ns)

    def percent(self) -> float | None:
        cpu = self._read()
        busy = cpu.get("user", 0) + cpu.get("kernel", 0)
        total = busy + cpu.get("idle", 0) + cpu.get("iowait", 0)
        with self._lock:
            previous, self._previous = self._previous, (busy, total)
        if previous is None:
            return None
        return _percent(busy - previous[0], total - previous[1])


class CgroupCpu:
    """From the root cgroup's CPU time, per wall time and per CPU the cgroup may use."""

    def __init__(self, usage_file: str, cpus: int,
                 clock: Callable[[], int] = time.monotonic_ns):
        self.usage_file = usage_file
        self.cpus = cpus
        self._clock = clock
        self._lock = threading.Lock()
        self._previous: tuple[int, int] | None = None  # (wall ns, cgroup CPU ns)

    def usage_ns(self) -> int:
        with open(self.usage_file, encoding="ascii") as handle:
            text = handle.read()
        if self.usage_file.endswith("cpu.stat"):
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
            raise ValueError(f"{self.usage_file} has no usage_usec")
        return int(text)

    def percent(self) -> float | None:
        with self._lock:
            sample = (self._clock(), self.usage_ns())
            previous, self._previous = self._previous, sample
        if previous is None:
            return None
        return _percent(sample[1] - previous[1], (sample[0] - previous[0]) * self.cpus)


def cgroup_usage_file(root: str) -> str | None:
    """The file holding the CPU time of the cgroup mounted at ``root`` (None: no accounting)."""
    for relative in (*_V1_USAGE, *_V2_STAT):
        path = os.path.join(root, relative)
        if os.path.isfile(path):
            return path
    return None


def source(config: AgentConfig, read_node: Callable[[], Mapping[str, int]],
           cgroup_root: str | None = None) -> HostCpu:
    """The HostCpu of ``config.cpu_accounting``; ``read_node`` gives libvirt's node CPU times."""
    if config.cpu_accounting == "node":
        return NodeCpu(read_node)
    cgroup_root = cgroup_root or CGROUP_ROOT
    usage = cgroup_usage_file(cgroup_root)
    if usage is None:
        raise InvalidSpec(f"{config.source} [statistics] cpu_accounting",
                          f"cgroup: no cgroup CPU accounting under {cgroup_root} (neither "
                          "cpuacct.usage of cgroup v1 nor cpu.stat of cgroup v2)")
    return CgroupCpu(usage, len(os.sched_getaffinity(0)))
