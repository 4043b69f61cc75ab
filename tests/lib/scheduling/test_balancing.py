"""Balancers propose migrations with reasons; they never move a VM onto a host they relieve."""

import numpy as np
import pytest

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.scheduling import POLICIES, HostState, HostTable, resolve
from engine_lib.scheduling.balancing import Running, balance


def running(table, vms):
    """vms: (name, host name, memory MiB, vcpus, CPU percent of its host)."""
    return Running([v[0] for v in vms], np.array([table.index[v[1]] for v in vms]),
                   np.array([v[2] for v in vms]), np.array([v[3] for v in vms]),
                   np.array([v[4] for v in vms], dtype=float))


def table_of(*hosts):
    return HostTable([HostState(name, "Up", 8, 16384, used_cpu_percent=cpu, vm_count=count)
                      for name, cpu, count in hosts])


def test_evenly_distributed_moves_the_busiest_vm_off_a_host_hot_for_the_whole_duration():
    table = table_of(("hot", 95, 2), ("cool", 10, 0), ("warm", 75, 0))
    vms = running(table, [("small", "hot", 1024, 1, 5), ("big", "hot", 1024, 4, 60)])
    history = np.array([[90, 92, 95], [10, 10, 10], [70, 72, 75]], dtype=float)
    proposals = balance(POLICIES["evenly_distributed"], table, vms, cpu_history=history)
    assert [(p.vm, p.source, p.destination) for p in proposals] == [("big", "hot", "cool")]
    assert proposals[0].reason.startswith("host hot CPU above 80% for 2 min (lowest sample 92%)")


def test_a_short_spike_moves_nothing():
    table = table_of(("spiky", 95, 1), ("cool", 10, 0))
    vms = running(table, [("vm", "spiky", 1024, 1, 50)])
    history = np.array([[40, 95], [10, 10]], dtype=float)
    assert balance(POLICIES["evenly_distributed"], table, vms, cpu_history=history) == []


def test_power_saving_empties_the_idlest_host_onto_a_busy_one():
    table = table_of(("idle", 5, 2), ("busy", 50, 3), ("other-idle", 8, 4))
    vms = running(table, [("a", "idle", 512, 1, 2), ("b", "idle", 512, 1, 2)] +
                  [(f"o{i}", "other-idle", 512, 1, 2) for i in range(4)])
    proposals = balance(POLICIES["power_saving"], table, vms)
    assert {(p.vm, p.source, p.destination) for p in proposals} == {("a", "idle", "busy"),
                                                                    ("b", "idle", "busy")}
    assert "emptying it so it can be powered down" in proposals[0].reason


def test_vm_evenly_distributed_respects_count_and_threshold():
    policy = resolve("vm_evenly_distributed", {"high_vm_count": 3, "migration_threshold": 2})
    table = table_of(("full", 10, 6), ("empty", 10, 0))
    vms = running(table, [(f"v{i}", "full", 512 * (i + 1), 1, 1) for i in range(6)])
    proposals = balance(policy, table, vms)
    assert [(p.vm, p.source, p.destination) for p in proposals] == [("v0", "full", "empty")]
    assert "runs 6 VMs (over 3, 6 more than the emptiest host)" in proposals[0].reason
    calm = resolve("vm_evenly_distributed", {"high_vm_count": 10})
    assert balance(calm, table, vms) == []


def test_policies_without_a_balancer_propose_nothing_and_claims_are_undone():
    table = table_of(("hot", 99, 1), ("cool", 1, 0))
    vms = running(table, [("vm", "hot", 1024, 2, 90)])
    assert balance(POLICIES["none"], table, vms) == []
    balance(POLICIES["evenly_distributed"], table, vms)
    assert table.claimed_mib.tolist() == [0, 0] and table.vm_count.tolist() == [1, 0]


def settle(policy, hosts, vms, rounds=8, **kw):
    """Balance round after round, carrying each proposal out (the VM and its CPU load move),
    as the engine loop does; the moves made, in order.

    hosts: name -> CPU percent without VMs; vms: [name, host, memory MiB, vcpus, CPU %]."""
    moves = []
    for _ in range(rounds):
        on = {h: [v for v in vms if v[1] == h] for h in hosts}
        table = HostTable([HostState(
            h, "Up", 8, 16384, used_cpu_percent=base + sum(v[4] for v in on[h]),
            vm_count=len(on[h]), claimed_mib=sum(v[2] for v in on[h]),
            claimed_vcpus=sum(v[3] for v in on[h])) for h, base in hosts.items()])
        proposals = balance(policy, table, running(table, vms), limit=1, **kw)
        if not proposals:
            return moves
        [p] = proposals
        next(v for v in vms if v[0] == p.vm)[1] = p.destination
        moves.append((p.vm, p.source, p.destination))
    raise AssertionError(f"still moving after {rounds} rounds: {moves}")


def test_power_saving_on_idle_hosts_does_not_ping_pong():
    # One VM on h1, an empty Up h2, no CPU load anywhere: already consolidated.
    assert settle(POLICIES["power_saving"], {"h1": 0, "h2": 0},
                  [["vm", "h1", 1024, 1, 0.0]]) == []


def test_power_saving_consolidates_idle_hosts_onto_the_fullest_once_then_stays_still():
    vms = [["a", "h1", 1024, 1, 0.0], ["b", "h2", 1024, 1, 0.0], ["c", "h2", 1024, 1, 0.0],
           ["d", "h3", 1024, 1, 0.0], ["e", "h3", 1024, 1, 0.0], ["f", "h3", 1024, 1, 0.0]]
    moves = settle(POLICIES["power_saving"], {"h1": 0, "h2": 0, "h3": 0, "h4": 0}, vms)
    assert moves == [("a", "h1", "h3"), ("b", "h2", "h3"), ("c", "h2", "h3")]
    assert {v[1] for v in vms} == {"h3"}


def test_power_saving_never_refills_a_host_it_relieved():
    # h1 is hot; relieving it moves the busy VM to the empty h2 and leaves h1 under the low
    # threshold. Emptying h1 onto h2 would make h2 hot again (and so on, for ever).
    vms = [["busy", "h1", 1024, 1, 70.0], ["light", "h1", 1024, 1, 15.0]]
    moves = settle(POLICIES["power_saving"], {"h1": 0, "h2": 0}, vms)
    assert moves == [("busy", "h1", "h2")]


def test_a_vm_cooling_down_after_a_migration_is_never_proposed():
    table = table_of(("hot", 95, 2), ("cool", 10, 0))
    vms = running(table, [("small", "hot", 1024, 1, 5), ("big", "hot", 1024, 4, 60)])
    vms.cooling = np.array([False, True])
    [proposal] = balance(POLICIES["evenly_distributed"], table, vms)
    assert proposal.vm == "small"
    vms.cooling = np.array([True, True])
    assert balance(POLICIES["evenly_distributed"], table, vms) == []

    # power_saving leaves a host with a VM cooling down alone: it could not empty it.
    table = table_of(("idle", 5, 2), ("busy", 50, 3))
    vms = running(table, [("a", "idle", 512, 1, 2), ("b", "idle", 512, 1, 2)] +
                  [(f"o{i}", "busy", 512, 1, 10) for i in range(3)])
    vms.cooling = np.array([True, False, False, False, False])
    assert balance(POLICIES["power_saving"], table, vms) == []


def test_the_cool_down_is_a_parameter_of_the_cpu_policies():
    for name in ("evenly_distributed", "power_saving"):
        assert resolve(name).param("vm_cooldown_minutes") == 30
        assert resolve(name, {"vm_cooldown_minutes": 0}).param("vm_cooldown_minutes") == 0
    with pytest.raises(InvalidSpec) as err:
        resolve("power_saving", {"vm_cooldown_minutes": 1441})
    assert err.value.field == "scheduling_policy_properties.vm_cooldown_minutes"


def test_power_saving_gathers_vms_on_the_fullest_host_even_when_its_vcpus_look_busy():
    # Two CPUs a host: the power_cpu weight counts h2's three claimed vCPUs as busy and
    # would prefer h3; the VMs still gather on h2, the fullest host.
    vms = [["a", "h1", 512, 1, 0.0], ["b", "h2", 512, 1, 0.0], ["c", "h2", 512, 1, 0.0],
           ["d", "h3", 512, 1, 0.0]]
    moves = []
    for _ in range(4):
        on = {h: [v for v in vms if v[1] == h] for h in ("h1", "h2", "h3")}
        table = HostTable([HostState(h, "Up", 2, 16384, vm_count=len(on[h]),
                                     claimed_mib=512 * len(on[h]), claimed_vcpus=len(on[h]))
                           for h in on])
        proposals = balance(POLICIES["power_saving"], table, running(table, vms), limit=1)
        if not proposals:
            break
        next(v for v in vms if v[0] == proposals[0].vm)[1] = proposals[0].destination
        moves.append((proposals[0].vm, proposals[0].source, proposals[0].destination))
    assert moves == [("a", "h1", "h2"), ("d", "h3", "h2")]
