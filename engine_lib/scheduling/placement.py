"""Place one VM: the policy's filters remove hosts (each with a reason), its weights rank the rest.

Pure: a VM, the hosts (a list of HostState or a prepared HostTable), the
cluster's policy and affinity context in; a Decision out. Ties go to the host
name that sorts first, so the same question always gets the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine_lib.scheduling.decision import Decision
from engine_lib.scheduling.filters import FILTERS, Filter
from engine_lib.scheduling.policies import DEFAULT_POLICY, POLICIES, Policy
from engine_lib.scheduling.state import Context, HostState, VmRequest
from engine_lib.scheduling.table import FloatColumn, HostTable, Indexes, Mask
from engine_lib.scheduling.weights import WEIGHTS, normalize


class Avoid(Filter):
    """A caller's own exclusion (a balancer keeping VMs off hosts it is emptying)."""

    name = "balancer"

    def __init__(self, mask: Mask, reason: str):
        self._mask, self.description = mask, reason

    def mask(self, table: HostTable, vm: VmRequest, detail: Any) -> Mask:
        return ~self._mask

    def check(self, host: HostState, vm: VmRequest, detail: Any) -> str | None:
        return self.description


def place(vm: VmRequest, hosts: Sequence[HostState] | HostTable, policy: Policy | None = None,
          context: Context | None = None, avoid: Avoid | None = None) -> Decision:
    table = hosts if isinstance(hosts, HostTable) else HostTable(hosts)
    policy = policy or POLICIES[DEFAULT_POLICY]
    ctx = context if context is not None else Context()

    alive = np.ones(table.size, dtype=bool)
    removed: list[tuple[Filter, Any, Indexes]] = []
    checks = [FILTERS[name] for name in policy.filters] + ([avoid] if avoid else [])
    for check in checks:
        detail = check.detail(vm, ctx)
        if not check.applies(vm, detail):
            continue
        passes = check.mask(table, vm, detail)
        gone = alive & ~passes
        if gone.any():
            removed.append((check, detail, np.flatnonzero(gone)))
            alive &= passes

    candidates = np.flatnonzero(alive)
    total = np.zeros(candidates.size)
    scores: list[tuple[str, float, FloatColumn]] = []
    if candidates.size:
        params = policy.params
        for name, factor in policy.weights:
            unit = WEIGHTS[name]
            share = normalize(unit.raw(table, vm, unit.detail(vm, ctx, params))[candidates]) * factor
            scores.append((name, factor, share))
            total += share

    chosen = None
    if candidates.size:
        best = candidates[total == total.max()]
        chosen = int(best[0]) if best.size == 1 else min(best, key=lambda i: table.names[i])
    return Decision(vm, policy.name, table, table.snapshot(), removed, candidates, scores, total,
                    chosen)
