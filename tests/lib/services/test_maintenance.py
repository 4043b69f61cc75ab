"""Host maintenance decisions, with fake agents and a fake migration service (real lab: tests/system)."""

import pytest
from fake_migrations import FakeMigrations

from engine_lib.loop.monitoring import Monitor
from engine_lib.protocol.errors import AgentUnreachable, Conflict, NoValidHost


@pytest.fixture
def migrations(engine, agents):
    engine.migrations = FakeMigrations(engine, agents)
    return engine.migrations


@pytest.fixture
def hosts(engine, cluster):
    for i in (1, 2, 3):
        engine.hosts.ensure(f"h{i}", address=f"10.0.0.{i}", cluster=cluster)
    return ["h1", "h2", "h3"]


def start(engine, name, memory=256, pinned=()):
    spec = {"name": name, "cluster": "c1", "memory": memory}
    if pinned:
        spec["placement"] = {"hosts": list(pinned)}
    return engine.vms.ensure(spec, state="running").entity["host"]


def where(engine):
    return {vm["name"]: vm["host"] for vm in engine.vms.info()}


def status(engine, host):
    return engine.hosts.info(host)[0]["status"]


def both_on_h1(engine, cluster):
    """h1 registered alone runs a and b; then h2 and h3 join the cluster."""
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    for name in ("a", "b"):
        assert start(engine, name) == "h1"
    for i in (2, 3):
        engine.hosts.ensure(f"h{i}", address=f"10.0.0.{i}", cluster=cluster)


def test_maintenance_migrates_every_vm_away_then_holds_the_host(engine, cluster, migrations,
                                                                agents):
    both_on_h1(engine, cluster)
    source, busy = "h1", {"a", "b"}

    outcome = engine.hosts.maintenance(source)

    assert outcome.changed
    assert outcome.entity["status"] == "Maintenance"
    assert sorted(m["vm"] for m in outcome.entity["migrations"]) == sorted(busy)
    assert all(m["status"] == "succeeded" and m["destination"] != source
               for m in outcome.entity["migrations"])
    assert outcome.diff == {"before": {"status": "Up", "vms": sorted(busy)},
                            "after": {"status": "Maintenance", "vms": []}}
    assert status(engine, source) == "Maintenance"
    assert source not in where(engine).values()
    # Each VM runs on exactly one agent, and not on the host in maintenance.
    vm_ids = {vm["id"] for vm in engine.vms.info()}
    placements = [vm_id for agent in agents.values() for vm_id in agent.vms]
    assert sorted(placements) == sorted(vm_ids)
    assert not agents[engine.hosts.info(source)[0]["address"]].vms
    messages = [e["message"] for e in engine.events.info(entity_type="host")]
    assert any(m.startswith("host is PreparingForMaintenance: migrating") for m in messages)
    assert messages[-1].startswith("host is in Maintenance: ")


def test_maintenance_again_changes_nothing(engine, hosts, migrations):
    start(engine, "a")
    source = where(engine)["a"]
    engine.hosts.maintenance(source)
    calls = list(migrations.calls)

    again = engine.hosts.maintenance(source)

    assert not again.changed
    assert again.entity["status"] == "Maintenance"
    assert migrations.calls == calls


def test_check_mode_reports_the_migrations_it_would_do_and_changes_nothing(
        engine, hosts, migrations):
    start(engine, "a")
    source = where(engine)["a"]
    before = where(engine)

    outcome = engine.hosts.maintenance(source, check_mode=True)

    assert outcome.changed
    assert outcome.entity["status"] == "Maintenance"
    [move] = outcome.entity["migrations"]
    assert move["vm"] == "a" and move["source"] == source and move["status"] == "planned"
    assert move["destination"] in hosts and move["destination"] != source
    assert migrations.calls == []
    assert where(engine) == before
    assert status(engine, source) == "Up"
    # The real run goes where check mode said.
    assert engine.hosts.maintenance(source).entity["migrations"][0]["destination"] == \
        move["destination"]


def test_a_pinned_vm_refuses_the_maintenance_at_once_naming_it(engine, hosts, migrations):
    start(engine, "free", pinned=("h1", "h2"))
    start(engine, "stuck", pinned=("h1",))
    before = where(engine)

    with pytest.raises(Conflict) as err:
        engine.hosts.maintenance("h1")

    assert "stuck" in err.value.message
    assert "pinned to h1" in err.value.message
    assert "nothing was changed" in err.value.message
    assert list(err.value.details["refused"]) == ["stuck"]
    assert status(engine, "h1") == "Up"
    assert where(engine) == before
    assert migrations.calls == []
    last = engine.events.info(entity_type="host")[-1]
    assert last["message"].startswith("maintenance refused: host 'h1' cannot go to maintenance")
    assert last["severity"] == "warning"


def test_no_room_for_all_the_vms_together_is_refused(engine, cluster, agents, migrations):
    from conftest import FakeAgent

    agents["10.0.0.2"] = FakeAgent("h2", memory_mib=1024)
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    for name in ("a", "b"):
        start(engine, name, memory=768, pinned=("h1", "h2"))
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)

    with pytest.raises(Conflict) as err:
        engine.hosts.maintenance("h1")

    # One of the two fits on h2; the other would not fit next to it.
    assert list(err.value.details["refused"]) == ["b"]
    assert "no host can run VM 'b'" in err.value.message
    assert "h2:" in err.value.message
    assert status(engine, "h1") == "Up" and migrations.calls == []


def test_a_failed_migration_brings_the_host_back_up_and_says_which_vm(
        engine, cluster, migrations):
    both_on_h1(engine, cluster)
    migrations.failing = {"b"}

    with pytest.raises(Conflict) as err:
        engine.hosts.maintenance("h1")

    assert "migrating VM 'b' failed: migration of VM 'b'" in err.value.message
    assert "is Up again" in err.value.message
    assert "already migrated: a to h" in err.value.message
    assert status(engine, "h1") == "Up"
    assert where(engine)["b"] == "h1" and where(engine)["a"] != "h1"
    assert engine.events.info(entity_type="host")[-1]["severity"] == "error"


def test_the_scheduler_places_nothing_on_a_host_preparing_for_or_in_maintenance(
        engine, cluster, migrations):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.maintenance("h1")
    with pytest.raises(NoValidHost) as err:
        start(engine, "a")
    assert "host status is Maintenance, not Up" in err.value.message

    engine.hosts.activate("h1")
    with engine.store.transaction() as session:
        from engine_lib.model import Host

        session.query(Host).one().status = "PreparingForMaintenance"
    with pytest.raises(NoValidHost) as err:
        start(engine, "b")
    assert "host status is PreparingForMaintenance, not Up" in err.value.message


def test_heartbeats_and_registering_again_keep_a_host_in_maintenance(engine, cluster, migrations):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.maintenance("h1")

    Monitor(engine).cycle()
    again = engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)

    assert not again.changed
    assert status(engine, "h1") == "Maintenance"


def test_activate_brings_the_host_back_up_once(engine, cluster, migrations):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.maintenance("h1")

    predicted = engine.hosts.activate("h1", check_mode=True)
    assert predicted.changed and predicted.entity["status"] == "Up"
    assert status(engine, "h1") == "Maintenance"

    outcome = engine.hosts.activate("h1")
    assert outcome.changed
    assert outcome.diff == {"before": {"status": "Maintenance", "vms": []},
                            "after": {"status": "Up", "vms": []}}
    assert status(engine, "h1") == "Up"
    assert engine.events.info(entity_type="host")[-1]["message"] == \
        "host activated: Up (was Maintenance)"
    assert not engine.hosts.activate("h1").changed


def test_activate_with_the_agent_down_keeps_the_host_in_maintenance(
        engine, cluster, agents, migrations):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.maintenance("h1")
    agents["10.0.0.1"].reachable = False

    with pytest.raises(AgentUnreachable):
        engine.hosts.activate("h1")
    assert status(engine, "h1") == "Maintenance"


def test_an_unknown_host_is_named(engine, cluster, migrations):
    from engine_lib.protocol.errors import HostNotFound

    with pytest.raises(HostNotFound, match="host 'nope' does not exist"):
        engine.hosts.maintenance("nope")


def test_a_timeout_that_is_not_positive_is_refused_before_anything(engine, cluster, migrations):
    from engine_lib.protocol.errors import InvalidSpec

    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    with pytest.raises(InvalidSpec, match="timeout: must be a positive number of seconds"):
        engine.hosts.maintenance("h1", timeout=0)
    assert status(engine, "h1") == "Up"


def test_a_vm_that_is_not_up_refuses_the_maintenance(engine, cluster, migrations):
    from engine_lib.model import Vm

    both_on_h1(engine, cluster)
    with engine.store.transaction() as session:
        session.query(Vm).filter_by(name="b").one().status = "Paused"

    with pytest.raises(Conflict, match="VM 'b' is Paused, not Up: only a running VM migrates"):
        engine.hosts.maintenance("h1")
    assert status(engine, "h1") == "Up" and migrations.calls == []
