"""The convergence policies' stepping, sample by sample (oVirt's schedules)."""

import pytest

from engine_lib.protocol import convergence
from engine_lib.protocol.convergence import Convergence
from engine_lib.protocol.errors import InvalidSpec


def feed(policy: Convergence, samples):
    return [policy.observe(iteration, remaining) for iteration, remaining in samples]


def stalls(n: int, remaining: int = 500, start: int = 2):
    """n iteration boundaries that send no less than before."""
    return [(start + i, remaining) for i in range(n)]


def test_minimal_downtime_steps_up_on_every_stall_and_aborts_after_500_ms():
    policy = Convergence("minimal_downtime")
    assert policy.downtime_ms == 100
    actions = feed(policy, [(1, 500)] + stalls(6))
    assert [a.kind for a in actions[1:]] == ["downtime"] * 5 + ["abort"]
    assert [a.downtime_ms for a in actions[1:6]] == [150, 200, 300, 400, 500]
    assert "500 ms" in actions[-1].reason
    assert policy.observe(99, 500) is None  # nothing after the abort


def test_progress_between_iterations_is_not_a_stall():
    policy = Convergence("minimal_downtime")
    assert feed(policy, [(1, 900), (2, 700), (3, 400), (4, 100)]) == [None] * 4
    assert policy.downtime_ms == 100 and policy.stalls == 0


def test_samples_within_one_iteration_count_once():
    policy = Convergence("minimal_downtime")
    actions = feed(policy, [(1, 500), (2, 600), (2, 700), (2, 800)])
    assert [a.kind if a else None for a in actions] == [None, "downtime", None, None]
    assert policy.downtime_ms == 150


def test_suspend_workload_ends_with_a_5000_ms_step_before_it_aborts():
    policy = Convergence("suspend_workload")
    actions = feed(policy, [(1, 500)] + stalls(7))
    assert [a.downtime_ms for a in actions[1:7]] == [150, 200, 300, 400, 500, 5000]
    assert actions[-1].kind == "abort"
    assert convergence.limit_of("suspend_workload") == 5000


def test_post_copy_switches_after_two_stalls_and_never_aborts():
    policy = Convergence("post_copy")
    actions = feed(policy, [(1, 500)] + stalls(5))
    assert [a.kind if a else None for a in actions] == [None, None, "postcopy", None, None, None]
    assert policy.downtime_ms == 100


def test_an_unknown_policy_is_refused_naming_the_field():
    with pytest.raises(InvalidSpec) as info:
        Convergence("fastest")
    assert info.value.field == "policy" and "minimal_downtime" in info.value.reason
