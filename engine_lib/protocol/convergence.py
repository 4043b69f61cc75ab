"""Convergence policies for live migration, as oVirt's: what to do when copying stalls.

A pre-copy migration converges when the memory still to send fits in the
allowed downtime; a busy guest dirties pages as fast as they are sent and the
copy "stalls". oVirt's answer is a schedule of downtime limits, stepped up on
every stalled iteration, and a last resort per policy:

- ``minimal_downtime``: 100 ms, then 150, 200, 300, 400, 500 ms; one more stall aborts;
- ``suspend_workload``: the same, then a last step of 5,000 ms (the guest is
  nearly paused while the rest is copied); one more stall aborts;
- ``post_copy``: 100 ms, and after two stalls switch to post-copy (the guest runs
  on the destination and pulls the pages it still misses).

Pure: it sees (iteration, bytes remaining) samples and answers an action, so it
is tested without libvirt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine_lib.protocol.errors import InvalidSpec

POLICIES = ("minimal_downtime", "post_copy", "suspend_workload")
DEFAULT_POLICY = "minimal_downtime"
MINIMAL_STEPS_MS = (100, 150, 200, 300, 400, 500)
SUSPEND_STEP_MS = 5000
POSTCOPY_AFTER_STALLS = 2


def check_policy(name: str) -> str:
    if name not in POLICIES:
        raise InvalidSpec("policy", f"'{name}' is not a migration policy; choose one of "
                                    f"{', '.join(POLICIES)}")
    return name


def steps_of(policy: str) -> tuple[int, ...]:
    """The downtime limits (ms) the policy steps through, first one first."""
    check_policy(policy)
    if policy == "suspend_workload":
        return MINIMAL_STEPS_MS + (SUSPEND_STEP_MS,)
    if policy == "post_copy":
        return MINIMAL_STEPS_MS[:1]
    return MINIMAL_STEPS_MS


def limit_of(policy: str) -> int:
    """The largest downtime (ms) the policy ever allows: what the result is checked against."""
    return steps_of(policy)[-1]


@dataclass(frozen=True)
class Action:
    kind: str  # "downtime" | "postcopy" | "abort"
    downtime_ms: int | None = None
    reason: str = ""


@dataclass
class Convergence:
    """Feed ``observe`` every progress sample; it answers the action due, if any."""

    policy: str
    step: int = 0
    stalls: int = 0
    _iteration: int = -1
    _best_remaining: int | None = None
    _done: bool = False
    history: list[Action] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.steps = steps_of(self.policy)

    @property
    def downtime_ms(self) -> int:
        return self.steps[self.step]

    def observe(self, iteration: int, remaining: int) -> Action | None:
        """A sample: the memory iteration QEMU is in and the bytes it still has to send.

        Only iteration boundaries count: an iteration that starts with no less
        to send than the best earlier boundary is a stall.
        """
        if self._done or iteration <= self._iteration:
            return None
        self._iteration = iteration
        if self._best_remaining is None or remaining < self._best_remaining:
            self._best_remaining = remaining  # progress (or the first sample)
            return None
        self.stalls += 1
        action = self._on_stall(iteration, remaining)
        if action is not None:
            self.history.append(action)
        return action

    def _on_stall(self, iteration: int, remaining: int) -> Action | None:
        why = f"iteration {iteration} stalled with {remaining} bytes to send"
        if self.policy == "post_copy":
            if self.stalls >= POSTCOPY_AFTER_STALLS:
                self._done = True
                return Action("postcopy", reason=why)
            return None
        if self.step + 1 < len(self.steps):
            self.step += 1
            return Action("downtime", self.steps[self.step], why)
        self._done = True
        return Action("abort", reason=f"{why} at the policy's last downtime "
                                      f"({self.steps[-1]} ms)")
