"""An agent's volume job inside an engine API job: its progress is the job's, and a cancel
aborts it on the agent and tells the caller to undo its rows (fake agents)."""

import pytest
from conftest import FakeAgent
from job_handles import RecordingJob
from sqlalchemy import select

from engine_lib.model import DeviceType, Vm, Volume
from engine_lib.protocol.errors import Cancelled
from engine_lib.services import job_context, volume_jobs

IMAGE = b"QFI\xfb" + b"\0" * 4092


@pytest.fixture(autouse=True)
def no_poll_wait(monkeypatch):
    monkeypatch.setattr(volume_jobs, "POLL_INTERVAL", 0)
    monkeypatch.setattr(volume_jobs, "FIRST_POLL", 0)


def test_wait_reports_the_agents_progress_and_a_cancel_aborts_the_agents_job():
    agent = FakeAgent("h1")
    agent.job_polls = 3
    agent.urls = {"http://x/img": b"data"}
    job_id = agent.start_import({"domain": "data", "image": "i", "volume": "v",
                                 "format": "raw"}, url="http://x/img", image_format="raw",
                                sha256="", content_type="data", timeout_s=30)["job"]
    agent.files = {"data/i/v": b"partly written"}
    job = RecordingJob(cancel_at=lambda percent, phase: percent == 50)
    with job_context.running(job), pytest.raises(Cancelled) as info:
        volume_jobs.wait(agent, job_id)
    assert job.reports == [(50, "receiving")]
    assert info.value.message == (f"cancelled by its user: agent job {job_id} (import) was "
                                  "aborted; the agent removed what it had written")
    assert info.value.details == {"job": job_id}
    assert agent.forgotten == [job_id] and agent.files == {}  # aborted once, nothing left


def test_wait_outside_a_job_is_not_cancelled():
    agent = FakeAgent("h1")
    agent.job_polls = 2
    agent.urls = {"http://x/img": b"data"}
    job_id = agent.start_import({"domain": "data", "image": "i", "volume": "v",
                                 "format": "raw"}, url="http://x/img", image_format="raw",
                                sha256="", content_type="data", timeout_s=30)["job"]
    assert volume_jobs.wait(agent, job_id)["actual_size"] == 4


@pytest.fixture
def agent(engine, cluster, agents):
    agent = agents["10.0.0.1"] = FakeAgent("h1")
    info = agent.host_info
    agent.host_info = lambda timeout=None: {**info(), "storage_domains": [
        {"name": "data", "path": "/srv/data", "available": True, "free_mib": 1024}]}
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    return agent


def test_a_cancelled_upload_leaves_no_disk_row_and_no_file(engine, agent, tmp_path):
    image = tmp_path / "disk.qcow2"
    image.write_bytes(IMAGE)
    agent.job_polls = 2
    job = RecordingJob(cancel_at="receiving")
    with job_context.running(job), pytest.raises(Cancelled, match="was aborted"):
        engine.images.upload("base", storage_domain="data", upload_image_path=str(image),
                             image_format="qcow2")
    assert engine.images.list() == []
    with engine.store.transaction(commit=False) as session:
        assert session.query(Volume).count() == 0
    assert agent.files == {} and agent.jobs == {} and len(agent.forgotten) == 1
    # Nothing blocks the next try.
    assert engine.images.upload("base", storage_domain="data", upload_image_path=str(image),
                                image_format="qcow2").entity["status"] == "ok"


class StuckCopy(FakeAgent):
    """A copy that runs until it is aborted."""

    def copy_volume(self, source, chain, target):
        self.copies = getattr(self, "copies", []) + [target]
        self._files()[self._target(target)] = b"half a copy"
        return self._new_job("copy", self._target(target))


def test_a_cancelled_template_copy_leaves_no_template_and_no_volume(engine, cluster, agents):
    agent = agents["10.0.0.1"] = StuckCopy("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure({"name": "golden", "cluster": cluster, "memory": "512MiB",
                       "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data",
                                  "bootable": True}]})
    with engine.store.transaction() as session:  # it ran once: its volume exists
        vm = session.scalars(select(Vm).where(Vm.name == "golden")).one()
        for device in vm.devices_of(DeviceType.DISK):
            device.volume_created = True
    with engine.store.transaction(commit=False) as session:
        before = sorted(v.id for v in session.query(Volume))
    job = RecordingJob(cancel_at="receiving")
    with job_context.running(job), pytest.raises(Cancelled, match=r"\(copy\) was aborted"):
        engine.templates.ensure("tpl", vm="golden")
    assert engine.templates.info() == []
    with engine.store.transaction(commit=False) as session:
        assert sorted(v.id for v in session.query(Volume)) == before
    assert agent.jobs == {} and agent.files == {}  # aborted: the agent removed its copy
