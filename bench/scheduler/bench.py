"""make bench-scheduler: placements per second on 5,000 hosts, vectorized vs the per-host loop.

Prints the figures side by side, then one JSON line with them. Hosts and VMs
are random but seeded, so two runs place the same VMs on the same hosts.
"""

from __future__ import annotations

import json
import platform
import random
import time

import numpy as np

from engine_lib.scheduling import POLICIES, HostState, HostTable, VmRequest, place
from engine_lib.scheduling.balancing import Running, balance
from engine_lib.scheduling.reference import place_reference

POLICY = POLICIES["evenly_distributed"]
MODELS = ("Haswell", "Skylake-Server", "Icelake-Server")


def hosts(count: int, seed: int) -> list[HostState]:
    rng = random.Random(seed)
    return [HostState(f"h{i:06d}", "Up" if rng.random() > 0.03 else "Maintenance",
                      rng.choice((32, 64, 128)), rng.choice((262144, 524288, 1048576)),
                      used_cpu_percent=rng.uniform(0, 90), used_memory_mib=rng.randint(0, 65536),
                      networks=frozenset(("mgmt", "data") if rng.random() > 0.1 else ("mgmt",)),
                      cpu_model=rng.choice(MODELS), hooks=frozenset(("vhostmd",)))
            for i in range(count)]


def vms(count: int, seed: int) -> list[VmRequest]:
    rng = random.Random(seed)
    return [VmRequest(f"vm{i}", rng.choice((1, 2, 4, 8)), rng.choice((1024, 2048, 4096, 8192)),
                      networks=frozenset(("data",)), cpu_model=rng.choice(MODELS[:2]),
                      machine=None)
            for i in range(count)]


def vectorized_rate(host_count: int, n: int) -> float:
    """Placements per second, each claiming on the table before the next (as the engine does)."""
    table, requests = HostTable(hosts(host_count, 1)), vms(n, 2)
    place(requests[0], table, POLICY)  # build the cached network/CPU columns once
    start = time.perf_counter()
    for vm in requests:
        decision = place(vm, table, POLICY)
        table.claim(decision.host_index, vm)
    return n / (time.perf_counter() - start)


def baseline_rate(host_count: int, n: int) -> float:
    """The same decisions, one host at a time in plain Python (engine_lib.scheduling.reference)."""
    states, requests = hosts(host_count, 1), vms(n, 2)
    start = time.perf_counter()
    for vm in requests:
        chosen, _f, _w = place_reference(vm, states, POLICY)
        i = next(k for k, h in enumerate(states) if h.name == chosen)
        h = states[i]
        states[i] = HostState(**{**h.__dict__, "claimed_mib": h.claimed_mib + vm.memory_mib,
                                 "claimed_guaranteed_mib": h.claimed_guaranteed_mib + vm.memory_mib,
                                 "claimed_vcpus": h.claimed_vcpus + vm.vcpus,
                                 "vm_count": h.vm_count + 1})
    return n / (time.perf_counter() - start)


def same_answers(host_count: int, n: int) -> bool:
    table, requests = HostTable(hosts(host_count, 1)), vms(n, 2)
    for vm in requests:
        decision = place(vm, table, POLICY)
        if decision.host != place_reference(vm, [table.state(i) for i in range(table.size)],
                                            POLICY)[0]:
            return False
        table.claim(decision.host_index, vm)
    return True


def balance_pass(host_count: int, vm_count: int) -> tuple[float, int]:
    rng = np.random.default_rng(3)
    table = HostTable(hosts(host_count, 1))
    running = Running([f"vm{i}" for i in range(vm_count)],
                      rng.integers(0, host_count, vm_count), rng.choice([1024, 2048, 4096], vm_count),
                      rng.choice([1, 2, 4], vm_count), rng.uniform(0, 10, vm_count))
    history = np.clip(table.used_cpu_percent[:, None] + rng.normal(0, 3, (host_count, 5)), 0, 100)
    start = time.perf_counter()
    proposals = balance(POLICY, table, running, cpu_history=history)
    return time.perf_counter() - start, len(proposals)


def main() -> None:
    print(f"scheduler benchmark, policy {POLICY.name}, Python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(f"answers agree with the per-host loop (500 hosts, 50 VMs): {same_answers(500, 50)}")
    rate = vectorized_rate(5000, 2000)
    baseline = baseline_rate(5000, 30)
    print(f"{'':32}{'placements/s':>14}")
    print(f"{'vectorized host table':32}{rate:>14.0f}")
    print(f"{'per-host Python loop':32}{baseline:>14.0f}   ({rate / baseline:.0f}x slower)")
    per_ms = {}
    print(f"\n{'hosts':>8}{'ms per placement':>18}")
    for count, n in ((500, 2000), (5000, 2000), (50000, 300)):
        per_ms[str(count)] = round(1000 / vectorized_rate(count, n), 4)
        print(f"{count:>8}{per_ms[str(count)]:>18.3f}")
    seconds, proposals = balance_pass(5000, 50000)
    print(f"\nbalancing pass, 5,000 hosts and 50,000 VMs: {seconds:.3f} s ({proposals} proposals)")
    print(json.dumps({"placements_per_s_5000": round(rate), "baseline_placements_per_s_5000":
                      round(baseline, 1), "per_placement_ms": per_ms,
                      "balance_pass_s": round(seconds, 4), "balance_proposals": proposals}))


if __name__ == "__main__":
    main()
