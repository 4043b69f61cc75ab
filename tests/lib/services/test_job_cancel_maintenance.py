"""Host maintenance inside an engine API job: progress is the share of VMs moved, and a
cancel (between migrations, or of the one in flight) puts the host back to Up (fake
agents and a fake migration service; real migrations: tests/system)."""

import pytest
from fake_migrations import FakeMigrations
from job_handles import RecordingJob

from engine_lib.protocol.errors import Cancelled
from engine_lib.services import job_context


class ReportingMigrations(FakeMigrations):
    """Reports half-way progress like the real service; ``cancel_in_flight``: VM names
    whose migration its user cancels while it runs (they stay on their source)."""

    cancel_in_flight: set = set()

    def migrate(self, vm, **options):
        job_context.current().progress(50, "migrating")
        if vm in self.cancel_in_flight:
            raise Cancelled(f"cancelled by its user: migration of VM '{vm}' was aborted")
        return super().migrate(vm, **options)


@pytest.fixture
def three_on_h1(engine, cluster, agents):
    engine.migrations = ReportingMigrations(engine, agents)
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    for name in ("a", "b", "c"):
        engine.vms.ensure({"name": name, "cluster": cluster, "memory": 256}, state="running")
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    return engine.migrations


def where(engine):
    return {vm["name"]: vm["host"] for vm in engine.vms.info()}


def host_status(engine, name):
    return engine.hosts.info(name)[0]["status"]


def test_progress_is_the_share_of_vms_moved(engine, three_on_h1):
    job = RecordingJob()
    with job_context.running(job):
        assert engine.hosts.maintenance("h1").entity["status"] == "Maintenance"
    assert job.reports == [(0, "migrating VM 'a' (1 of 3)"), (16, "VM 'a' (1 of 3): migrating"),
                           (33, "migrating VM 'b' (2 of 3)"), (49, "VM 'b' (2 of 3): migrating"),
                           (66, "migrating VM 'c' (3 of 3)"), (83, "VM 'c' (3 of 3): migrating"),
                           (100, "in Maintenance")]


def test_a_cancel_between_migrations_stops_there_and_the_host_is_up_again(engine, three_on_h1):
    job = RecordingJob(cancel_at="migrating VM 'b'")
    with job_context.running(job), pytest.raises(Cancelled) as info:
        engine.hosts.maintenance("h1")
    assert info.value.message == (
        "cancelled by its user: maintenance of host 'h1': 1 of 3 VMs migrated (a to h2); "
        "VM 'b' runs on h1; host 'h1' is Up again")
    assert [vm for vm, _ in three_on_h1.calls] == ["a"]  # no further migration started
    assert where(engine) == {"a": "h2", "b": "h1", "c": "h1"}
    assert host_status(engine, "h1") == "Up"
    last = engine.events.info(entity_type="host")[-1]
    assert last["message"].startswith("maintenance cancelled by its user, host is Up again")
    assert last["severity"] == "warning"
    # Running it again resumes from where it stopped.
    assert engine.hosts.maintenance("h1").entity["status"] == "Maintenance"
    assert set(where(engine).values()) == {"h2"}


def test_a_cancelled_migration_in_flight_cancels_the_maintenance(engine, three_on_h1):
    three_on_h1.cancel_in_flight = {"a"}
    with job_context.running(RecordingJob()), pytest.raises(Cancelled) as info:
        engine.hosts.maintenance("h1")
    assert "0 of 3 VMs migrated (none); VM 'a' runs on h1" in info.value.message
    assert info.value.details["migrated"] == []
    assert host_status(engine, "h1") == "Up"
    assert set(where(engine).values()) == {"h1"}
