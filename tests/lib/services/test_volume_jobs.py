"""Waiting for an agent job: long polls, and no busy loop against an agent that answers
at once."""

from __future__ import annotations

import pytest

from engine_lib.broker import AgentApi
from engine_lib.protocol.errors import NotFound
from engine_lib.services import volume_jobs


class Clock:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 3))
        self.now += seconds


class Agent(AgentApi):
    """A job that ends after ``polls`` answers; ``long_polls``: each answer waits
    its ``wait`` (as the agent does while the job runs)."""

    def __init__(self, clock: Clock, polls: int, long_polls: bool):
        self.clock, self.polls, self.long_polls = clock, polls, long_polls
        self.waits: list[float] = []
        self.restarted = False  # it no longer knows the job

    def job(self, job_id: str, wait: float = 0) -> dict:
        if self.restarted:
            raise NotFound("job", job_id)
        self.waits.append(wait)
        self.polls -= 1
        if self.polls > 0:
            if self.long_polls:
                self.clock.now += wait
            return {"id": job_id, "status": "running", "progress": 10}
        return {"id": job_id, "status": "succeeded", "result": {"ok": True}}

    def forget_job(self, job_id: str) -> dict:
        return {}


@pytest.mark.parametrize("long_polls", [True, False], ids=["long-poll", "answers-at-once"])
def test_polls_wait_on_the_agent_or_sleep_what_it_did_not_wait(long_polls):
    clock = Clock()
    agent = Agent(clock, polls=6, long_polls=long_polls)
    assert volume_jobs.wait(agent, "j1", clock=clock, sleep=clock.sleep) == {"ok": True}
    assert agent.waits == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]  # backing off to POLL_INTERVAL
    # A long-polling agent leaves nothing to sleep; one that answers at once is not
    # polled in a busy loop: the engine sleeps each pause itself.
    assert clock.slept == ([] if long_polls else [0.05, 0.1, 0.2, 0.4, 0.5])


def test_a_job_the_agent_no_longer_knows_is_lost_not_failed():
    clock = Clock()
    agent = Agent(clock, 1, True)
    agent.restarted = True
    with pytest.raises(volume_jobs.JobLost, match="no longer knows job j1"):
        volume_jobs.wait(agent, "j1", clock=clock, sleep=clock.sleep)
