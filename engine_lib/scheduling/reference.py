"""The same placement as ``place``, written as the straightforward loop over hosts.

It is the yardstick: the tests check that the vectorized placement agrees with
it host for host, and ``make bench-scheduler`` measures both side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine_lib.scheduling.filters import FILTERS
from engine_lib.scheduling.policies import DEFAULT_POLICY, POLICIES, Policy
from engine_lib.scheduling.state import Context, HostState, VmRequest
from engine_lib.scheduling.weights import WEIGHTS, normalize_one


def place_reference(vm: VmRequest, hosts: Sequence[HostState], policy: Policy | None = None,
                    context: Context | None = None
                    ) -> tuple[str | None, dict[str, str], dict[str, float]]:
    """(chosen host, {host: reason it was removed}, {host: total weight})."""
    policy = policy or POLICIES[DEFAULT_POLICY]
    ctx = context if context is not None else Context()
    checks = [(FILTERS[n], FILTERS[n].detail(vm, ctx)) for n in policy.filters]
    checks = [(check, detail) for check, detail in checks if check.applies(vm, detail)]
    filtered: dict[str, str] = {}
    passed: list[HostState] = []
    for host in hosts:
        for check, detail in checks:
            reason = check.check(host, vm, detail)
            if reason:
                filtered[host.name] = reason
                break
        else:
            passed.append(host)
    totals = [0.0] * len(passed)
    params = policy.params
    for name, factor in policy.weights:
        unit = WEIGHTS[name]
        detail = unit.detail(vm, ctx, params)
        shares = normalize_one([unit.raw_one(h, vm, detail) for h in passed])
        totals = [t + s * factor for t, s in zip(totals, shares)]
    weights = {h.name: t for h, t in zip(passed, totals)}
    chosen = min(weights, key=lambda n: (-weights[n], n)) if weights else None
    return chosen, filtered, weights
