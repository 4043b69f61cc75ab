"""Progress and cancellation of a VM start and a live migration run as an engine API job
(job_context), with fake agents; the real thing on lab hosts: tests/system/test_job_cancel.py."""

import xml.etree.ElementTree as ET

import pytest
from conftest import FakeAgent
from job_handles import RecordingJob

from engine_lib.protocol.errors import AgentUnreachable, Cancelled, KestrelError
from engine_lib.services import job_context
from engine_lib.services import migrations as migrations_service

VM = {"name": "vm1", "cluster": "c1", "memory": "512MiB"}


class SlowStarter(FakeAgent):
    """Starts a guest that stays PoweringUp; ``on_poll`` runs at each status poll, before
    the agent answers it."""

    on_poll = None

    def start_vm(self, xml, mode="fresh"):
        super().start_vm(xml, mode)
        vm_id = ET.fromstring(xml).findtext("uuid")
        self.vms[vm_id] = "PoweringUp"
        return {"id": vm_id, "status": "PoweringUp"}

    def vm_status(self, vm_id):
        if self.on_poll is None:
            return super().vm_status(vm_id)
        self.on_poll()
        report = {"id": vm_id, "status": self.vms.get(vm_id, "Down")}
        return report


@pytest.fixture
def host(engine, cluster, agents):
    agents["10.0.0.1"] = SlowStarter("h1", memory_mib=1024)
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    return agents["10.0.0.1"]


def start(engine, job, spec=VM):
    with job_context.running(job):
        return engine.vms.ensure(spec, state="running")


def test_a_start_reports_its_phases(engine, host):
    host.on_poll = lambda: host.vms.update({vm_id: "Up" for vm_id in host.vms})
    job = RecordingJob()
    assert start(engine, job).entity["status"] == "Up"
    assert job.phases == ["scheduling", "starting on host h1", "waiting for Up on host h1",
                          "Up on host h1"]
    assert job.percents == sorted(job.percents) and job.percents[-1] == 100


def test_a_start_cancelled_while_waiting_for_up_is_stopped_and_releases_its_claim(
        engine, host):
    job = RecordingJob()
    polls = []
    host.on_poll = lambda: (polls.append(1), setattr(job, "cancelled", True))
    with pytest.raises(Cancelled) as info:
        start(engine, job)
    assert len(polls) == 1  # it was waiting on the agent when its user cancelled
    assert "the VM was stopped there (destroyed) and is Down" in info.value.message
    assert info.value.details == {"vm": "vm1", "host": "h1"}
    vm = engine.vms.info("vm1")[0]
    assert (vm["status"], vm["host"]) == ("Down", None)
    assert host.vms == {}  # destroyed and forgotten by its agent
    assert "cancelled by its user" in engine.events.info(entity_type="vm")[-1]["message"]
    # Its 512 MiB of h1's 1024 are free again: two more VMs of that size fit.
    host.on_poll = lambda: host.vms.update({vm_id: "Up" for vm_id in host.vms})
    for name in ("vm1", "vm2"):
        assert engine.vms.ensure({**VM, "name": name}, state="running").entity["host"] == "h1"


def test_a_start_cancelled_before_it_is_scheduled_changes_nothing(engine, host):
    job = RecordingJob(cancel_at="scheduling")
    with pytest.raises(Cancelled, match="before it was scheduled; nothing was changed"):
        start(engine, job)
    assert engine.vms.info("vm1")[0]["status"] == "Down" and host.vms == {}
    assert not any("scheduled" in e["message"] for e in engine.events.info(entity_type="vm"))


def test_a_cancel_whose_stop_cannot_reach_the_host_guesses_nothing(engine, host):
    job = RecordingJob()
    host.on_poll = lambda: (setattr(job, "cancelled", True),
                            setattr(host, "reachable", False))
    with pytest.raises(AgentUnreachable, match="was cancelled, but stopping it failed"):
        start(engine, job)
    vm = engine.vms.info("vm1")[0]
    assert (vm["status"], vm["host"]) == ("WaitForLaunch", "h1")  # not Down on a guess


def test_outside_a_job_nothing_is_reported_or_cancelled(engine, host):
    host.on_poll = lambda: host.vms.update({vm_id: "Up" for vm_id in host.vms})
    assert engine.vms.ensure(VM, state="running").entity["status"] == "Up"
    assert isinstance(job_context.current(), job_context._NoJob)


# -- live migration ----------------------------------------------------------------------


class MigratingSource(FakeAgent):
    """Sends a migration that moves data (10 MiB a poll of 100) until it is cancelled."""

    def prepare_incoming(self, xml):
        return {"paths": {}}

    def migrate_vm(self, vm_id, destination_uri, paths, policy="minimal_downtime",
                   bandwidth_mibps=None, tls=False):
        self.sent, self.cancelled = 0, False
        return {"status": "running"}

    def migration(self, vm_id):
        if self.cancelled:
            return {"id": vm_id, "status": "cancelled", "error": "operation aborted by client",
                    "progress": {"data_processed_mib": self.sent}}
        self.sent += 10
        return {"id": vm_id, "status": "running",
                "progress": {"data_processed_mib": self.sent,
                             "data_remaining_mib": 100 - self.sent}}

    def cancel_migration(self, vm_id):
        self.cancelled = True
        return {"id": vm_id}

    def vm_status(self, vm_id):
        return {**super().vm_status(vm_id), "state": "running"}


class Incoming(MigratingSource):
    def prepare_incoming(self, xml):
        self.vms[ET.fromstring(xml).findtext("uuid")] = "MigratingTo"
        return {"paths": {}}

    def cancel_migration(self, vm_id):
        self.vms.pop(vm_id, None)
        return {"id": vm_id}


@pytest.fixture
def migrating(engine, cluster, agents, monkeypatch):
    monkeypatch.setattr(migrations_service, "POLL", 0)
    agents["10.0.0.1"] = MigratingSource("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    vm = engine.vms.ensure(VM, state="running").entity
    agents["10.0.0.2"] = Incoming("h2")
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    return vm, agents["10.0.0.1"], agents["10.0.0.2"]


def test_a_migration_reports_the_share_of_data_sent_and_a_cancel_keeps_the_vm_on_its_source(
        engine, migrating):
    vm, source, destination = migrating
    job = RecordingJob(cancel_at=lambda percent, phase: percent >= 30)
    with job_context.running(job), pytest.raises(Cancelled) as info:
        engine.migrations.migrate("vm1")
    assert job.reports[:4] == [(0, "migrating to h2"), (10, "migrating to h2"),
                               (20, "migrating to h2"), (30, "migrating to h2")]
    assert source.sent == 30  # cancelled at once, through the user's cancel path
    assert info.value.message == ("cancelled by its user: migration of VM 'vm1' from h1 to "
                                  "h2 was aborted; the VM runs on h1")
    assert info.value.details["migration"]["status"] == "cancelled"
    row = engine.vms.info("vm1")[0]
    assert (row["status"], row["host"]) == ("Up", "h1")
    assert source.vms == {vm["id"]: "Up"} and destination.vms == {}
    assert engine.migrations.history("vm1")[-1]["status"] == "cancelled"
    messages = [e["message"] for e in engine.events.info(entity_type="vm")]
    assert "migration to h2: cancel requested" in messages


def test_a_migration_cancelled_before_it_started_changes_nothing(engine, migrating):
    job = RecordingJob()
    job.cancelled = True  # while it waited in the API's queue
    with job_context.running(job), pytest.raises(Cancelled, match="nothing was changed"):
        engine.migrations.migrate("vm1")
    assert engine.migrations.history("vm1") == []
    assert engine.vms.info("vm1")[0]["status"] == "Up"


@pytest.mark.parametrize("progress, percent", [
    ({}, 0), ({"data_processed_mib": 0, "data_remaining_mib": 0}, 0),
    ({"data_processed_mib": 25, "data_remaining_mib": 75}, 25),
    ({"data_processed_mib": 500, "data_remaining_mib": 0}, 99),
])
def test_migration_percent(progress, percent):
    assert migrations_service.percent_done(progress) == percent


def test_a_part_of_a_job_maps_its_progress_into_the_jobs_range():
    job = RecordingJob(cancel_at="b: half")
    with job_context.running(job):
        with job_context.part(50, 100, "b") as part:
            part.progress(0, "start")
            part.progress(50, "half")
            assert job_context.current().cancel_requested()
        job_context.current().progress(100, "done")
    assert job.reports == [(50, "b: start"), (75, "b: half"), (100, "done")]


def test_outside_a_job_a_running_migration_still_records_its_progress(engine, migrating,
                                                                      monkeypatch):
    monkeypatch.setattr(migrations_service, "PROGRESS_WRITE_INTERVAL", 0)
    _vm, source, _destination = migrating
    seen = []
    sample = source.migration

    def migration(vm_id):
        if source.sent == 50:  # mid-flight: what `kestrel vm migrations` shows now
            seen.extend(row["progress"] for row in engine.migrations.active())
            source.cancelled = True  # then it ends
        return sample(vm_id)

    source.migration = migration
    try:
        engine.migrations.migrate("vm1")
    except KestrelError:
        pass  # how it ends is other tests' business
    assert seen and seen[0]["data_processed_mib"] == 50
