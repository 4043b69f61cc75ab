"""Long operations as jobs: a job runs as its user, reports progress (written at most once a
second), sees its user's cancel request (DELETE /jobs/{id} over the served API), a full
pool answers Busy, and jobs a stopped process left running end failed."""

from __future__ import annotations

import threading
import time

import pytest
from api_fixtures import admin, agents, api, connect  # noqa: F401

from engine_lib.api import jobs as jobs_module
from engine_lib.api.jobs import JobRunner
from engine_lib.model import ApiJob
from engine_lib.protocol.errors import Busy, Cancelled
from engine_lib.services import actor, job_context


def _wait(runner: JobRunner, job_id: str, view_all=True, timeout=20) -> dict:
    deadline = time.monotonic() + timeout
    while (job := runner.get(job_id, view_all=view_all))["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)  # polling the row is what a client does
    return job


def test_delete_cancels_a_job_whose_handle_sees_it(api, admin):
    runner = api.server.config.app.state.jobs
    started, seen = threading.Event(), []

    def long_step():
        started.set()
        while True:  # what a service does between steps
            try:
                job_context.check_cancelled("copying")
            except Exception:
                seen.append(actor.current().name)
                raise
            time.sleep(0.01)

    me = admin.get("/auth/whoami").json()
    with actor.acting_as(actor.Actor(me["user"], user_id="x", token_id=me["token_id"])):
        job = runner.start("test.long", long_step)
    assert started.wait(10)
    listed = admin.get("/jobs", params={"status": "running"}).json()["items"]
    assert job["id"] in [j["id"] for j in listed]
    cancel = admin.delete(f"/jobs/{job['id']}")
    assert cancel.status_code == 202 and cancel.json()["status"] == "running"
    done = _wait(runner, job["id"])
    assert done["status"] == "cancelled" and done["error"]["code"] == "Cancelled"
    assert seen == [me["user"]]  # it ran as its user
    again = admin.delete(f"/jobs/{job['id']}")
    assert again.status_code == 409 and again.json()["code"] == "Conflict"


@pytest.fixture
def runner(engine):
    made = JobRunner(engine.store, workers=1)
    yield made
    made.shutdown()


def test_a_full_pool_answers_busy_and_frees_its_slot(runner):
    release = threading.Event()
    first = runner.start("test.block", release.wait)
    with pytest.raises(Busy):
        runner.start("test.second", lambda: None)
    release.set()
    assert _wait(runner, first["id"])["status"] == "succeeded"
    assert _wait(runner, runner.start("test.third", lambda: {"ok": 1})["id"])["result"] == {
        "ok": 1}


def test_jobs_left_running_by_a_stopped_process_end_failed(engine, runner):
    with engine.store.transaction() as session:
        session.add(ApiJob(id="left", operation="vms.ensure", user_name="u"))
    assert runner.recover() == 1
    job = runner.get("left", view_all=True)
    assert job["status"] == "failed" and "restarted" in job["error"]["message"]
    assert job["ended"] is not None


def test_progress_is_written_at_most_once_a_second(engine, runner, monkeypatch):
    with engine.store.transaction() as session:
        session.add(ApiJob(id="p", operation="images.upload", user_name="u"))
    now = [100.0]
    handle = jobs_module._Handle(engine.store, "p", clock=lambda: now[0])
    writes = []
    real_flush = handle.flush
    monkeypatch.setattr(handle, "flush", lambda: (writes.append(now[0]), real_flush()))
    for step in range(10):  # ten reports within 0.9 s: one write
        now[0] = 100.0 + step * 0.1
        handle.progress(step, "copying")
    now[0] = 101.05
    handle.progress(50, "copying")
    assert writes == [100.0, 101.05]
    assert runner.get("p", view_all=True)["progress"] == 50


def _cancelled():
    raise Cancelled("the job was cancelled")


@pytest.mark.parametrize("call, status", [
    (lambda: {"ok": 1}, "succeeded"), (_cancelled, "cancelled"), (lambda: 1 / 0, "failed")])
def test_a_jobs_outcome_is_known_only_once_its_row_records_it(engine, runner, call, status):
    # A request that answers with the outcome (an upload's PUT) must not get ahead of GET
    # /jobs: what the row says when the outcome settles is what the client reads next.
    with actor.acting_as(actor.Actor("u", user_id="x")):
        started, outcome = runner.submit("test.outcome", call)
    seen, looked = [], threading.Event()

    def look(_):
        seen.append(runner.get(started["id"], view_all=True)["status"])
        looked.set()

    outcome.add_done_callback(look)
    assert looked.wait(20)
    assert seen == [status]
