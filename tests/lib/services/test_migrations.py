"""engine.migrations' own decisions, before any agent moves anything (fake agents;
the real moves, failures included, are in tests/system/test_migration.py)."""

import pytest
from conftest import FakeAgent

from engine_lib.model import Vm
from engine_lib.protocol.errors import (
    AgentUnreachable,
    Conflict,
    HostNotFound,
    InvalidSpec,
    NoValidHost,
)
from engine_lib.services import migrations as migrations_service
from engine_lib.services.migrations import mibps


@pytest.fixture
def running(engine, cluster):
    for i in (1, 2):
        engine.hosts.ensure(f"h{i}", address=f"10.0.0.{i}", cluster=cluster)
    vm = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256},
                           state="running").entity
    return vm


def test_check_mode_names_the_destination_and_changes_nothing(engine, running):
    outcome = engine.migrations.migrate("vm1", check_mode=True)
    assert outcome.changed
    assert outcome.entity["source"] == running["host"]
    assert outcome.entity["destination"] == ({"h1", "h2"} - {running["host"]}).pop()
    assert outcome.entity["policy"] == "minimal_downtime"
    assert outcome.entity["policy_limit_ms"] == 500
    assert engine.migrations.history("vm1") == []
    assert engine.vms.info("vm1")[0]["status"] == "Up"


def test_the_clusters_policy_and_bandwidth_apply_unless_the_call_says_otherwise(
        engine, cluster, running):
    engine.clusters.ensure(cluster, migration_policy="suspend_workload",
                           migration_bandwidth_mbps=800)
    planned = engine.migrations.migrate("vm1", check_mode=True).entity
    assert (planned["policy"], planned["bandwidth_mbps"], planned["policy_limit_ms"]) == \
        ("suspend_workload", 800, 5000)
    planned = engine.migrations.migrate("vm1", policy="post_copy", bandwidth_mbps=0,
                                        check_mode=True).entity
    assert (planned["policy"], planned["bandwidth_mbps"]) == ("post_copy", 0)
    assert mibps(800) == 95 and mibps(1) == 1 and mibps(0) is None


@pytest.mark.parametrize("options, field", [
    ({"policy": "fastest"}, "policy"),
    ({"bandwidth_mbps": -5}, "bandwidth_mbps"),
    ({"bandwidth_mbps": "fast"}, "bandwidth_mbps"),
    ({"timeout": 0}, "timeout"),
])
def test_bad_options_are_refused_naming_the_field(engine, running, options, field):
    with pytest.raises(InvalidSpec) as info:
        engine.migrations.migrate("vm1", **options)
    assert info.value.field == field
    assert engine.migrations.history("vm1") == []


def test_the_cluster_refuses_an_unknown_migration_policy(engine, cluster):
    with pytest.raises(InvalidSpec) as info:
        engine.clusters.ensure(cluster, migration_policy="fastest")
    assert info.value.field == "migration_policy"
    with pytest.raises(InvalidSpec) as info:
        engine.clusters.ensure(cluster, migration_bandwidth_mbps=-1)
    assert info.value.field == "migration_bandwidth_mbps"
    assert engine.clusters.get(cluster)["migration_policy"] == "minimal_downtime"


def test_where_a_vm_cannot_go_is_said_before_anything_moves(engine, cluster, running):
    with pytest.raises(InvalidSpec) as info:
        engine.migrations.migrate("vm1", host=running["host"])
    assert info.value.field == "host" and "already runs" in info.value.reason
    with pytest.raises(HostNotFound):
        engine.migrations.migrate("vm1", host="h9")
    engine.vms.ensure({"name": "vm1", "placement": {"hosts": [running["host"]]}})
    with pytest.raises(NoValidHost) as info:
        engine.migrations.migrate("vm1")
    assert "pinned" in info.value.message
    assert engine.migrations.history("vm1") == []


def test_only_a_running_vm_migrates(engine, cluster, running):
    engine.vms.ensure({"name": "idle", "cluster": cluster, "memory": 256})
    with pytest.raises(Conflict) as info:
        engine.migrations.migrate("idle")
    assert "is Down, not Up" in info.value.message


@pytest.mark.parametrize("state", ["stopped", "suspended", "absent"])
def test_a_migrating_vm_is_not_stopped_saved_or_removed_behind_the_migrations_back(
        engine, running, agents, state):
    from engine_lib.model import Vm
    from engine_lib.protocol.statuses import VmStatus

    with engine.store.transaction() as session:
        session.get(Vm, running["id"]).status = VmStatus.MIGRATING_FROM
    agent = agents[engine.hosts.info(running["host"])[0]["address"]]
    with pytest.raises(Conflict) as info:
        engine.vms.ensure({"name": "vm1"}, state=state)
    assert "is migrating away from host" in info.value.message
    assert "kestrel vm cancel-migration vm1" in info.value.message
    assert engine.vms.info("vm1")[0]["status"] == "MigratingFrom"
    assert agent.vms[running["id"]] == "Up"  # the agent was not asked to stop it


def test_kestrel_vm_cancel_migration_says_when_there_is_none(engine, running, db_url, tmp_path,
                                                             capsys):
    from engine_lib import cli

    assert cli.main(["vm", "cancel-migration", "vm1", "--engine-dir", str(tmp_path / "engine"),
                     "--db-url", db_url]) == 1
    assert "VM vm1 is not migrating" in capsys.readouterr().err


class MovingAgent(FakeAgent):
    """Source and destination of a migration that succeeds at once."""

    def prepare_incoming(self, xml):
        return {"paths": {}}

    def migrate_vm(self, vm_id, destination_uri, paths, policy="minimal_downtime",
                   bandwidth_mibps=None, tls=False):
        return {"status": "running"}

    def migration(self, vm_id):
        return {"id": vm_id, "status": "succeeded", "downtime_ms": 40}

    def vm_status(self, vm_id):
        return {**super().vm_status(vm_id), "state": "running"}


# PostgreSQL only: there two transactions interleave; SQLite serializes them (BEGIN IMMEDIATE).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_vm_row_written_by_the_engine_loop_meanwhile_does_not_lose_the_switch(
        engine, cluster, agents, monkeypatch):
    for i in (1, 2):
        agents[f"10.0.0.{i}"] = MovingAgent(f"h{i}")
        engine.hosts.ensure(f"h{i}", address=f"10.0.0.{i}", cluster=cluster)
    vm = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256},
                           state="running").entity
    source = vm["host"]
    destination = ({"h1", "h2"} - {source}).pop()
    incoming = agents[f"10.0.0.{destination[1]}"]
    incoming.vms[vm["id"]] = "Up"  # the incoming copy, resumed
    incoming.last_xml = agents[f"10.0.0.{source[1]}"].last_xml
    read = migrations_service.get_vm
    loop_wrote = []

    def read_then_the_loop_writes(session, name):
        row = read(session, name)
        # Once while planning (Up), once while switching (MigratingFrom): the loop's
        # guest-info write lands between the migration's read and its write.
        if row.status not in loop_wrote:
            loop_wrote.append(row.status)
            with engine.store.transaction() as other:
                other.get(Vm, row.id).guest_info = {"hostname": f"seen {row.status}"}
        return row

    monkeypatch.setattr(migrations_service, "get_vm", read_then_the_loop_writes)
    outcome = engine.migrations.migrate("vm1", host=destination)
    assert loop_wrote == ["Up", "MigratingFrom"]
    assert outcome.entity["status"] == "succeeded"
    vm = engine.vms.info("vm1")[0]
    assert (vm["host"], vm["status"]) == (destination, "Up")
    assert vm["guest"]["hostname"] == "seen MigratingFrom"  # the loop's write kept, too


class LaggingDestination(MovingAgent):
    """A destination agent whose registry still says MigratingTo for a moment after
    libvirt resumed the guest there: the RESUMED event is on its way to the agent."""

    def __init__(self, name, stale_answers):
        super().__init__(name)
        self.stale_answers = stale_answers

    def vm_status(self, vm_id):
        report = super().vm_status(vm_id)
        if self.stale_answers > 0:
            self.stale_answers -= 1
            return {**report, "status": "MigratingTo"}
        return report

    def cancel_migration(self, vm_id):
        # What the real agent answers for a copy libvirt already resumed.
        raise Conflict(f"VM {vm_id} already runs on this host: its migration completed")


def test_a_destination_that_has_not_yet_seen_its_resume_event_is_waited_for(
        engine, cluster, agents, monkeypatch):
    """The source reports success once the destination's libvirtd resumed the guest; the
    destination agent learns it from an event a moment later. Until then it reports the
    guest running but still MigratingTo: that is a migration about to settle, not a VM
    that runs nowhere (which recorded it Unknown and raised MigrationFailed)."""
    monkeypatch.setattr(migrations_service, "POLL", 0.01)
    agents["10.0.0.1"] = MovingAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    vm = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256},
                           state="running").entity
    agents["10.0.0.2"] = destination = LaggingDestination("h2", stale_answers=3)
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    destination.vms[vm["id"]] = "Up"
    destination.last_xml = agents["10.0.0.1"].last_xml
    agents["10.0.0.1"].vms.pop(vm["id"])  # the source's copy is gone after the switchover

    outcome = engine.migrations.migrate("vm1", host="h2")

    assert outcome.entity["status"] == "succeeded"
    assert destination.stale_answers == 0
    moved = engine.vms.info("vm1")[0]
    assert (moved["host"], moved["status"]) == ("h2", "Up")


class LostMigrateAnswer(MovingAgent):
    """A source whose answer to the migrate call is lost (timeout) although it started the
    migration: it runs for a moment, then the guest is on ``destination``."""

    def __init__(self, name, destination):
        super().__init__(name)
        self.destination, self.polls = destination, 0

    def migrate_vm(self, vm_id, destination_uri, paths, policy="minimal_downtime",
                   bandwidth_mibps=None, tls=False):
        raise AgentUnreachable(f"agent {self.name} unreachable: no answer within 2 s",
                               cause="timeout")

    def migration(self, vm_id):
        self.polls += 1
        if self.polls == 1:
            return {"id": vm_id, "status": "running", "progress": {}}
        self.vms.pop(vm_id, None)
        self.destination.vms[vm_id] = "Up"
        return {"id": vm_id, "status": "succeeded", "downtime_ms": 40}


class Destination(MovingAgent):
    def prepare_incoming(self, xml):
        import xml.etree.ElementTree as ET

        self.vms[ET.fromstring(xml).findtext("uuid")] = "MigratingTo"
        return {"paths": {}}

    def cancel_migration(self, vm_id):
        self._check()
        self.cancelled = vm_id
        self.vms.pop(vm_id, None)
        return {"id": vm_id}


@pytest.fixture
def pair(engine, cluster, agents, monkeypatch):
    """vm1 Up on h1; h2, a Destination, joins after it started."""
    monkeypatch.setattr(migrations_service, "POLL", 0.01)
    monkeypatch.setattr(migrations_service, "SETTLE_TIMEOUT", 0.05)
    agents["10.0.0.1"] = MovingAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    vm = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256},
                           state="running").entity
    agents["10.0.0.2"] = destination = Destination("h2")
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    destination.last_xml = agents["10.0.0.1"].last_xml
    return vm, agents["10.0.0.1"], destination


def test_a_migration_whose_migrate_answer_is_lost_is_followed_not_failed(engine, pair, agents):
    vm, source, destination = pair
    agents["10.0.0.1"] = LostMigrateAnswer("h1", destination)
    agents["10.0.0.1"].vms = source.vms
    outcome = engine.migrations.migrate("vm1", host="h2")
    assert outcome.entity["status"] == "succeeded"
    assert not hasattr(destination, "cancelled")  # the incoming copy was not dropped
    moved = engine.vms.info("vm1")[0]
    assert (moved["host"], moved["status"]) == ("h2", "Up")


def test_a_migration_no_agent_confirms_is_not_recorded_on_a_guess(engine, pair, agents):
    vm, source, destination = pair

    def the_destination_goes_silent(vm_id, *args, **kwargs):
        source.vms.pop(vm_id)  # the source let it go...
        destination.reachable = False  # ...and the destination cannot say it has it
        return {"status": "running"}

    source.migrate_vm = the_destination_goes_silent
    with pytest.raises(AgentUnreachable) as info:
        engine.migrations.migrate("vm1", host="h2")
    assert "outcome unknown" in info.value.message
    assert engine.migrations.history("vm1")[-1]["status"] == "running"
    assert engine.vms.info("vm1")[0]["status"] == "MigratingFrom"
    # Once the destination answers, the engine loop settles it from what it says.
    destination.reachable, destination.vms[vm["id"]] = True, "Up"
    age_unsettled_attempts(engine)
    engine.migrations.active()
    moved = engine.vms.info("vm1")[0]
    assert (moved["host"], moved["status"]) == ("h2", "Up")
    assert engine.migrations.history("vm1")[-1]["status"] == "succeeded"


def age_unsettled_attempts(engine):
    """Make the unsettled attempt old enough for the loop to take it as nobody's."""
    from datetime import timedelta

    from engine_lib.model import Migration, utcnow

    with engine.store.transaction() as session:
        for row in session.query(Migration).filter_by(status="running"):
            row.started_at = utcnow() - timedelta(seconds=migrations_service.ORPHAN_AFTER + 1)
