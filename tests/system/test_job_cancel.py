"""A VM start and a live migration cancelled by their job's user, on lab hosts: the real
agent undoes the start (no domain left anywhere) or aborts the migration (the guest runs
on its source only). The job handle cancels at a reported phase: no timing involved."""

from __future__ import annotations

import os
import sys

import pytest
from test_migration import (  # noqa: F401 (cluster, guest: fixtures)
    SLOW_MBPS,
    assert_runs_only_on,
    cluster,
    copies,
    guest,
    tiny_guest,
    wait_for_copies,
)

from engine_lib.protocol.errors import Cancelled
from engine_lib.services import job_context

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))
from job_handles import RecordingJob

pytestmark = pytest.mark.lab


@pytest.fixture
def stopped_vm(engine, cluster, agents):
    vm = engine.vms.ensure(tiny_guest("jobstart", placement={"hosts": ["h1"]}),
                           state="stopped").entity
    yield vm
    engine.vms.ensure({"name": "jobstart"}, state="absent")
    assert copies(agents, vm["id"]) == {}, "a domain stayed behind"


def test_a_start_cancelled_by_its_user_is_destroyed_on_its_host(engine, agents, stopped_vm):
    seen = {}

    def cancel_once_started(percent: int, phase: str) -> bool:
        if phase.startswith("waiting for Up"):
            seen.update(copies(agents, stopped_vm["id"]))  # libvirt runs it right now
            return True
        return False

    job = RecordingJob(cancel_at=cancel_once_started)
    with job_context.running(job), pytest.raises(Cancelled) as info:
        engine.vms.ensure({"name": "jobstart"}, state="running")

    assert seen == {"h1": "running"}
    assert "the VM was stopped there (destroyed) and is Down" in info.value.message
    assert job.phases == ["scheduling", "starting on host h1", "waiting for Up on host h1"]
    assert copies(agents, stopped_vm["id"]) == {}  # destroyed and undefined by the agent
    vm = engine.vms.info("jobstart")[0]
    assert (vm["status"], vm["host"]) == ("Down", None)
    assert engine.vms.ensure({"name": "jobstart"}, state="running").entity["host"] == "h1"


def test_a_migration_cancelled_by_its_user_leaves_the_vm_on_its_source(engine, agents,
                                                                       guest):
    vm = guest("jobmig")
    source = vm["host"]
    job = RecordingJob(cancel_at=lambda percent, phase: percent > 0)  # data is moving

    with job_context.running(job), pytest.raises(Cancelled) as info:
        engine.migrations.migrate("jobmig", bandwidth_mbps=SLOW_MBPS)

    assert f"was aborted; the VM runs on {source}" in info.value.message
    assert max(job.percents) < 99
    wait_for_copies(agents, vm["id"], {source: "running"})
    assert_runs_only_on(engine, agents, vm, source)
    assert engine.migrations.history("jobmig")[-1]["status"] == "cancelled"
    assert engine.migrations.active() == []
