"""The agent's job registry: one job per volume, abort with cleanup, retention."""

from __future__ import annotations

import threading

import pytest

from engine_lib.agent import jobs as jobs_module
from engine_lib.agent.jobs import Jobs
from engine_lib.protocol.errors import Conflict, InvalidSpec, NotFound


def test_a_second_job_on_the_same_volume_is_a_conflict_naming_it():
    jobs = Jobs()
    first = jobs.create("upload", "data/img/vol")
    with pytest.raises(Conflict) as err:
        jobs.create("copy", "data/img/vol")
    assert "data/img/vol" in err.value.message and first.id in err.value.message
    jobs.create("upload", "data/img/other")  # another volume is free
    jobs.finish(first, InvalidSpec("image", "bad"))
    jobs.create("upload", "data/img/vol")  # freed when the first ended


def test_work_runs_in_a_thread_and_its_result_is_kept():
    jobs = Jobs()
    job = jobs.create("copy", "d/i/v")
    jobs.run(job, lambda j: {"done": threading.current_thread().name})
    assert job.finished.wait(10)
    report = jobs.get(job.id).to_dict()
    assert report["status"] == "succeeded" and report["progress"] == 100
    assert report["result"]["done"].startswith("job-copy-")


def test_a_failure_runs_the_cleanups_newest_first_before_it_is_reported():
    jobs = Jobs()
    job = jobs.create("upload", "d/i/v")
    order: list[str] = []
    job.cleanups += [lambda: order.append("staging"), lambda: order.append("converted")]
    job.closers.append(lambda: order.append("fds"))

    def work(_job):
        raise InvalidSpec("image_format", "lies")

    jobs.run(job, work)
    assert job.finished.wait(10)
    assert order == ["converted", "staging", "fds"]
    assert job.to_dict()["error"]["details"]["field"] == "image_format"


def test_success_runs_only_the_closers():
    jobs = Jobs()
    job = jobs.create("upload", "d/i/v")
    order: list[str] = []
    job.cleanups.append(lambda: order.append("cleanup"))
    job.closers.append(lambda: order.append("fds"))
    jobs.finish(job, {})
    assert order == ["fds"]


def test_deleting_a_running_job_aborts_it_and_waits_for_its_cleanup():
    jobs = Jobs()
    job = jobs.create("copy", "d/i/v")
    started = threading.Event()
    cleaned: list[bool] = []
    job.cleanups.append(lambda: cleaned.append(True))

    def work(j):
        started.set()
        j.abort.wait(10)
        j.check()
        return {}

    jobs.run(job, work)
    assert started.wait(10)
    report = jobs.delete(job.id)
    assert report["status"] == "aborted" and cleaned == [True]
    jobs.create("copy", "d/i/v")  # the volume is free again


def test_deleting_an_idle_upload_aborts_it_at_once():
    jobs = Jobs()
    job = jobs.create("upload", "d/i/v")
    cleaned: list[bool] = []
    job.cleanups.append(lambda: cleaned.append(True))
    assert jobs.delete(job.id)["status"] == "aborted"
    assert cleaned == [True]


def test_deleting_a_finished_job_forgets_it_and_runs_on_forget():
    jobs = Jobs()
    job = jobs.create("export")
    forgotten: list[bool] = []
    job.on_forget = lambda: forgotten.append(True)
    jobs.finish(job, {"length": 1})
    assert jobs.delete(job.id)["forgotten"] is True
    assert forgotten == [True]
    with pytest.raises(NotFound):
        jobs.get(job.id)


def test_finished_jobs_are_kept_an_hour_or_while_among_the_last_200(monkeypatch):
    now = [1000.0]
    jobs = Jobs(clock=lambda: now[0])
    old = [jobs.create("copy") for _ in range(250)]
    for job in old:
        jobs.finish(job, {})
    now[0] += 3599
    jobs.prune()
    assert all(jobs.get(job.id) for job in old)  # under an hour: all kept
    now[0] += 2
    jobs.prune()
    kept = [job for job in old if job.id in jobs._jobs]
    assert len(kept) == 200


def test_an_upload_left_idle_gives_its_volume_back(monkeypatch):
    now = [0.0]
    jobs = Jobs(clock=lambda: now[0])
    job = jobs.create("upload", "d/i/v")
    now[0] += jobs_module.IDLE_SECONDS + 1
    jobs.prune()
    assert job.status == "aborted"
    jobs.create("upload", "d/i/v")


def test_an_upload_step_has_one_owner():
    jobs = Jobs()
    job = jobs.create("upload", "d/i/v")
    jobs.take(job.id, "upload")
    with pytest.raises(Conflict, match="busy"):
        jobs.take(job.id, "upload")
    jobs.release(job)
    with pytest.raises(Conflict, match="not export"):
        jobs.take(job.id, "export")


def test_stopping_the_agent_aborts_running_jobs_with_their_cleanups():
    jobs = Jobs()
    idle = jobs.create("upload", "d/i/a")
    working = jobs.create("copy", "d/i/b")
    cleaned: list[str] = []
    idle.cleanups.append(lambda: cleaned.append("idle"))
    working.cleanups.append(lambda: cleaned.append("working"))

    def work(j):
        j.abort.wait(10)
        j.check()
        return {}

    jobs.run(working, work)
    jobs.abort_all()
    assert (idle.status, working.status) == ("aborted", "aborted")
    assert sorted(cleaned) == ["idle", "working"]


def test_an_aborted_upload_takes_no_more_bytes():
    jobs = Jobs()
    job = jobs.create("upload", "d/i/v")
    jobs.take(job.id, "upload")
    job.abort.set()
    with pytest.raises(Conflict):
        jobs.take(job.id, "upload")
    jobs.release(job)  # the owner's step ends: the abort completes
    assert job.status == "aborted"
