"""The hosts as columns: one numpy array per fact, so a filter is one vector operation.

A placement on 5,000 hosts then costs a few dozen array operations instead of
5,000 Python objects visited per filter. Set-valued facts (networks, hooks,
machines, CPU model) become boolean columns built once per value and cached,
because a cluster has few distinct networks and every VM asks about the same
ones. Claims (``claim``) update the columns in place, which is what lets an
offline simulation or a benchmark place VM after VM on one table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from engine_lib.scheduling.state import UP, HostState, VmRequest

# The columns a claim changes: a decision copies them to explain itself later.
MUTABLE = ("claimed_mib", "claimed_guaranteed_mib", "claimed_vcpus", "vm_count")

# The column types: one entry per host, in the table's order.
IntColumn = NDArray[np.int64]
FloatColumn = NDArray[np.float64]
Mask = NDArray[np.bool_]
# Host positions in the table (what np.flatnonzero and np.argsort give).
Indexes = NDArray[np.intp]

_Scalar = TypeVar("_Scalar", bound=np.generic)


class HostTable:
    def __init__(self, hosts: Sequence[HostState]):
        self.hosts = list(hosts)
        self.names = [h.name for h in self.hosts]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.size = len(self.hosts)

        def column(attr: str, dtype: type[_Scalar]) -> NDArray[_Scalar]:
            return np.fromiter((getattr(h, attr) for h in self.hosts), dtype=dtype, count=self.size)

        self.up = np.fromiter((h.status == UP for h in self.hosts), dtype=bool, count=self.size)
        self.cpus = column("cpus", np.int64)
        self.memory_mib = column("memory_mib", np.int64)
        self.overcommit_percent = column("overcommit_percent", np.int64)
        self.used_memory_mib = column("used_memory_mib", np.int64)
        self.used_cpu_percent = column("used_cpu_percent", np.float64)
        self.claimed_mib = column("claimed_mib", np.int64)
        self.claimed_guaranteed_mib = column("claimed_guaranteed_mib", np.int64)
        self.claimed_vcpus = column("claimed_vcpus", np.int64)
        self.vm_count = column("vm_count", np.int64)
        self.overcommitted_mib = self.memory_mib * self.overcommit_percent // 100
        self._hugepages: dict[int, IntColumn] = {}
        self._cache: dict[tuple[Hashable, ...], Mask] = {}

    # -- derived columns -------------------------------------------------------------------

    def schedulable_mib(self) -> IntColumn:
        return self.overcommitted_mib - self.claimed_mib

    def physical_free_mib(self) -> IntColumn:
        return self.memory_mib - np.maximum(self.used_memory_mib, self.claimed_guaranteed_mib)

    def cpu_load_with(self, vcpus: int) -> FloatColumn:
        return self.used_cpu_percent + 100.0 * (self.claimed_vcpus + vcpus) / np.maximum(self.cpus, 1)

    def hugepages_free(self, page_kib: int) -> IntColumn:
        if page_kib not in self._hugepages:
            self._hugepages[page_kib] = np.fromiter(
                (h.hugepages_free.get(page_kib, 0) for h in self.hosts), dtype=np.int64,
                count=self.size)
        return self._hugepages[page_kib]

    def where(self, key: tuple[Hashable, ...], predicate: Callable[[HostState], bool]) -> Mask:
        """A cached boolean column: ``predicate`` over the hosts' static facts."""
        mask = self._cache.get(key)
        if mask is None:
            mask = np.fromiter((predicate(h) for h in self.hosts), dtype=bool, count=self.size)
            self._cache[key] = mask
        return mask

    def names_mask(self, names: Sequence[str | None]) -> Mask:
        mask = np.zeros(self.size, dtype=bool)
        mask[[self.index[n] for n in names if n in self.index]] = True
        return mask

    # -- claims ----------------------------------------------------------------------------

    def claim(self, i: int, vm: VmRequest) -> None:
        """Record that host ``i`` now runs ``vm`` (what the engine's transaction records)."""
        self.claimed_mib[i] += vm.memory_mib
        self.claimed_guaranteed_mib[i] += vm.guaranteed
        self.claimed_vcpus[i] += vm.vcpus
        self.vm_count[i] += 1
        if vm.hugepage_kib:
            self.hugepages_free(vm.hugepage_kib)[i] -= vm.hugepages_needed

    def release(self, i: int, vm: VmRequest) -> None:
        self.claimed_mib[i] -= vm.memory_mib
        self.claimed_guaranteed_mib[i] -= vm.guaranteed
        self.claimed_vcpus[i] -= vm.vcpus
        self.vm_count[i] -= 1
        if vm.hugepage_kib:
            self.hugepages_free(vm.hugepage_kib)[i] += vm.hugepages_needed

    def snapshot(self) -> dict[str, IntColumn]:
        snap = {name: getattr(self, name).copy() for name in MUTABLE}
        snap.update({f"hugepages:{k}": v.copy() for k, v in self._hugepages.items()})
        return snap

    def state(self, i: int, snapshot: dict[str, IntColumn] | None = None) -> HostState:
        """Host ``i`` as a HostState, with the claims it had when ``snapshot`` was taken."""
        snap = snapshot or self.snapshot()
        host = self.hosts[i]
        pages = dict(host.hugepages_free)
        for key, column in snap.items():
            if key.startswith("hugepages:"):
                pages[int(key.split(":")[1])] = int(column[i])
        # The MUTABLE names are HostState's int fields of the same names.
        claims: dict[str, Any] = {name: int(snap[name][i]) for name in MUTABLE}
        return dataclasses.replace(host, hugepages_free=pages, **claims)
