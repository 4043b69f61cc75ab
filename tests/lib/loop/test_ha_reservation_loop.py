"""The engine's HA reservation on its database (SQLite and PostgreSQL): the loop's check, its
events, the cluster and host results, and the placement that keeps the reservation."""

from datetime import UTC, datetime, timedelta

import pytest
from conftest import FakeAgent

from engine_lib.loop.ha_reservation import ReservationCheck, check
from engine_lib.model import HaReservationCheck
from engine_lib.protocol.errors import InvalidSpec

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def start(engine, name, memory, ha=False):
    spec = {"name": name, "cluster": "c1", "memory": memory}
    if ha:
        spec["high_availability"] = {"enabled": True}
    return engine.vms.ensure(spec, state="running").entity["host"]


def events(engine):
    return [(e["severity"], e["message"]) for e in engine.events.info(entity_type="cluster",
                                                                      entity_name="c1")
            if "HA reservation" in e["message"]]


@pytest.fixture
def reserved(engine, cluster):
    """h1 runs HA VM a (3000 MiB of 4096); h2 runs ordinary VM big (2000 MiB of 4096), so
    a could not restart on h2."""
    engine.clusters.ensure(cluster, ha_reservation=True)
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    assert start(engine, "a", 3000, ha=True) == "h1"
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    assert start(engine, "big", 2000) == "h2"
    return cluster


def test_the_check_records_a_lost_reservation_once_and_its_return(engine, reserved):
    [result] = check(engine, T0)
    assert result["ok"] is False and result["hosts"] == ["h1"]
    cluster = engine.clusters.get("c1")
    assert cluster["ha_reservation"] is True and cluster["ha_reservation_ok"] is False
    assert cluster["ha_reservation_detail"]["hosts"] == ["h1"]
    assert cluster["ha_reservation_detail"]["checked_at"] == T0.isoformat()
    hosts = {h["name"]: h["ha_reservation"] for h in engine.hosts.info()}
    assert hosts["h1"]["ok"] is False and hosts["h2"]["ok"] is True
    assert hosts["h1"]["enabled"] is True
    # Unchanged: no second event.
    check(engine, T0 + timedelta(minutes=1))
    assert events(engine) == [("warning", "HA reservation lost: the highly available VMs of "
                                          "host(s) h1 could not all restart on the other Up "
                                          "hosts if it failed")]
    engine.vms.ensure({"name": "big", "cluster": "c1", "memory": 2000}, state="stopped")
    [result] = ReservationCheck(engine).cycle()
    assert result["ok"] is True and result["ha_vms"] == 1
    assert engine.clusters.get("c1")["ha_reservation_ok"] is True
    assert [severity for severity, _ in events(engine)] == ["warning", "info"]
    assert events(engine)[-1][1].startswith("HA reservation restored")


def test_turning_the_option_off_forgets_the_check(engine, reserved):
    check(engine, T0)
    outcome = engine.clusters.ensure("c1", ha_reservation=False)
    assert outcome.changed
    assert check(engine, T0) == []
    with engine.store.transaction(commit=False) as session:
        assert session.get(HaReservationCheck, engine.clusters.get("c1")["id"]) is None
    cluster = engine.clusters.get("c1")
    assert (cluster["ha_reservation"], cluster["ha_reservation_ok"],
            cluster["ha_reservation_detail"]) == (False, None, {})
    assert {h["name"]: h["ha_reservation"]["ok"] for h in engine.hosts.info()} == {
        "h1": None, "h2": None}


def test_a_cluster_without_the_option_is_never_checked(engine, cluster):
    assert check(engine, T0) == []
    assert engine.clusters.get(cluster)["ha_reservation"] is False


def test_the_option_must_be_a_boolean(engine, cluster):
    with pytest.raises(InvalidSpec) as error:
        engine.clusters.ensure(cluster, ha_reservation="maybe")
    assert error.value.field == "ha_reservation"


@pytest.mark.parametrize("reservation, expected", [(False, "h2"), (True, "h3")])
def test_a_start_prefers_the_host_that_keeps_the_reservation(engine, cluster, agents,
                                                             reservation, expected):
    """h1 runs HA VM a (3000 MiB); b (2000 MiB) fits on h2 (4500) and h3 (2500). The
    default weights pick h2, which would leave a nowhere to restart."""
    agents["10.0.0.2"] = FakeAgent("h2", memory_mib=4500)
    agents["10.0.0.3"] = FakeAgent("h3", memory_mib=2500)
    engine.clusters.ensure(cluster, ha_reservation=reservation)
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    assert start(engine, "a", 3000, ha=True) == "h1"
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    engine.hosts.ensure("h3", address="10.0.0.3", cluster=cluster)
    assert start(engine, "b", 2000) == expected
    [policy] = engine.clusters.scheduling_policies(cluster=cluster)
    assert ("ha_reservation" in [w["name"] for w in policy["weights"]]) is reservation
