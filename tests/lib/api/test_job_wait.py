"""GET /jobs/{id}?wait=: the answer is held while the job runs and comes as soon as it ends,
so a client learns of a short job's end at once, not at its next poll."""

from __future__ import annotations

import threading

from api_fixtures import admin, agents, api, connect  # noqa: F401

from engine_lib.client import RemoteEngine
from engine_lib.services import actor


def _start(api, admin, call) -> dict:
    me = admin.get("/auth/whoami").json()
    with actor.acting_as(actor.Actor(me["user"], user_id="x", token_id=me["token_id"])):
        return api.server.config.app.state.jobs.start("test.wait", call)


def _holding(api, monkeypatch) -> threading.Event:
    """Set when a GET starts holding its answer."""
    runner = api.server.config.app.state.jobs
    entered, original = threading.Event(), runner.wait

    async def wait(job_id, seconds):
        entered.set()
        await original(job_id, seconds)

    monkeypatch.setattr(runner, "wait", wait)
    return entered


def test_a_held_get_answers_when_the_job_ends(api, admin, monkeypatch):
    release, answers = threading.Event(), []
    holding = _holding(api, monkeypatch)
    job = _start(api, admin, lambda: {"released": release.wait(30)})
    getter = threading.Thread(target=lambda: answers.append(
        admin.get(f"/jobs/{job['id']}", params={"wait": 30})))
    getter.start()
    assert holding.wait(10), "the GET did not wait for the job"
    release.set()
    getter.join(20)
    answer = answers[0].json()
    assert answers[0].status_code == 200, answer
    assert answer["status"] == "succeeded" and answer["result"] == {"released": True}


def test_a_held_get_gives_up_after_its_wait_and_bad_waits_are_refused(api, admin, connect):
    release = threading.Event()
    job = _start(api, admin, lambda: release.wait(30))
    try:
        assert admin.get(f"/jobs/{job['id']}", params={"wait": 0.05}).json()["status"] \
            == "running"
        for bad in ("31", "-1", "soon"):
            refused = admin.get(f"/jobs/{job['id']}", params={"wait": bad})
            assert refused.status_code == 400 and refused.json()["details"]["field"] == "wait"
        # Someone else's job is absent at once, held or not.
        other = connect(api.token_for("VmOperator")).get(f"/jobs/{job['id']}",
                                                         params={"wait": 30})
        assert other.status_code == 404
    finally:
        release.set()


def test_the_client_waits_on_the_server_not_on_its_poll_interval(api, admin, monkeypatch):
    release = threading.Event()
    holding = _holding(api, monkeypatch)
    job = _start(api, admin, lambda: {"done": release.wait(30)})
    with RemoteEngine.connect(api.url, token=api.admin_token, ca_file=api.ca_file) as remote:
        threading.Thread(target=lambda: holding.wait(10) and release.set()).start()
        assert remote.wait_job(job) == {"done": True}
    assert holding.is_set()
