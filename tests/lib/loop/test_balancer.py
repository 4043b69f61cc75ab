"""The engine loop's balancer, with fake agents and a fake migration service (real lab: tests/system)."""

from datetime import UTC, datetime, timedelta

import pytest
from fake_migrations import FakeMigrations

from engine_lib.loop.balancer import Balancer, Settings
from engine_lib.model import Host, Migration, StatsSample, Vm, VmStatistics

VM_COUNT = {"high_vm_count": 1, "migration_threshold": 1}
NOW = datetime(2026, 12, 6, 21, 30, 20, tzinfo=UTC)


def now():
    return NOW


@pytest.fixture
def migrations(engine, agents):
    engine.migrations = FakeMigrations(engine, agents)
    return engine.migrations


def crowd(engine, cluster, counts: dict[str, int]):
    """Hosts registered one at a time, each alone in the cluster while its VMs start."""
    for host, count in counts.items():
        with engine.store.transaction() as session:
            for other in session.query(Host).all():
                other.status = "Maintenance"
        engine.hosts.ensure(host, address=f"10.0.0.{host[1:]}", cluster=cluster)
        for k in range(count):
            engine.vms.ensure({"name": f"{host}-vm{k}", "cluster": cluster, "memory": 128},
                              state="running")
    with engine.store.transaction() as session:
        for host in session.query(Host).all():
            host.status = "Up"


def where(engine):
    return {vm["name"]: vm["host"] for vm in engine.vms.info()}


def policy(engine, name, **properties):
    engine.clusters.ensure("c1", scheduling_policy=name, scheduling_policy_properties=properties)


def test_an_overloaded_host_is_relieved_one_migration_per_round(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 3, "h2": 0})
    policy(engine, "vm_evenly_distributed", **VM_COUNT)
    balancer = Balancer(engine)

    [moved] = balancer.cycle()

    assert moved["source"] == "h1" and moved["destination"] == "h2"
    assert moved["status"] == "succeeded"
    assert moved["reason"].startswith("host h1 runs 3 VMs (over 1, 3 more than the emptiest host)")
    assert migrations.calls == [(moved["vm"], "h2")]
    assert sorted(where(engine).values()) == ["h1", "h1", "h2"]
    entry = engine.events.info(entity_type="vm", entity_name=moved["vm"])[-1]
    assert entry["message"] == (f"balancing: migrating vm {moved['vm']} from h1 to h2 "
                                f"({moved['reason']})")
    # Balanced within the threshold now: the next round moves nothing.
    assert balancer.cycle() == []


def test_the_rate_limit_caps_migrations_per_cluster_per_round(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 4, "h2": 4, "h3": 0})
    policy(engine, "vm_evenly_distributed", **VM_COUNT)

    assert len(Balancer(engine, Settings(max_migrations=1)).cycle()) == 1
    assert len(Balancer(engine, Settings(max_migrations=2)).cycle()) == 2
    assert len(migrations.calls) == 3


def test_a_policy_without_a_balancer_moves_nothing(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 3, "h2": 0})
    assert Balancer(engine).cycle() == []
    assert migrations.calls == []


def test_a_cluster_with_a_migration_in_flight_waits(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 3, "h2": 0})
    policy(engine, "vm_evenly_distributed", **VM_COUNT)
    migrations.in_flight = [{"vm": "h1-vm0", "source": "h1", "destination": "h2",
                             "status": "running"}]
    assert Balancer(engine).cycle() == []

    migrations.in_flight = []
    assert len(Balancer(engine).cycle()) == 1


def test_a_cluster_with_a_host_preparing_for_maintenance_waits(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 3, "h2": 0, "h3": 0})
    policy(engine, "vm_evenly_distributed", **VM_COUNT)
    with engine.store.transaction() as session:
        session.query(Host).filter_by(name="h3").one().status = "PreparingForMaintenance"
    assert Balancer(engine).cycle() == []
    assert migrations.calls == []


def measure(engine, hosts: dict[str, list[float]], vms: dict[str, float] | None = None):
    """What the statistics poll leaves: each host's CPU of its last minutes (newest last) in
    the history and as its current figure, and each VM's CPU (100 = one host CPU)."""
    with engine.store.transaction() as session:
        for name, minutes in hosts.items():
            host = session.query(Host).filter_by(name=name).one()
            host.used_cpu_percent = minutes[-1]
            session.query(StatsSample).filter_by(object_id=host.id).delete()
            last = NOW.replace(second=0)
            session.add_all(StatsSample(kind="host", object_id=host.id, resolution="raw",
                                        at=last - timedelta(minutes=len(minutes) - 1 - i),
                                        cpu_percent=cpu) for i, cpu in enumerate(minutes))
        for name, cpu in (vms or {}).items():
            vm = session.query(Vm).filter_by(name=name).one()
            session.merge(VmStatistics(vm_id=vm.id, host_id=vm.run_on_host_id, cpu_percent=cpu))


def test_cpu_load_must_last_the_policy_duration_before_a_vm_moves(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 2, "h2": 0})
    policy(engine, "evenly_distributed", high_utilization=80, cpu_overcommit_duration_minutes=2)
    measure(engine, {"h1": [95.0], "h2": [5.0]}, {"h1-vm0": 200.0})
    assert Balancer(engine, now=now).cycle() == []  # one minute: not yet "for 2 minutes"
    measure(engine, {"h1": [40.0, 95.0], "h2": [5.0, 5.0]})
    assert Balancer(engine, now=now).cycle() == []  # a spike

    # The history is the database's: a balancer just started acts on it at once.
    measure(engine, {"h1": [90.0, 95.0], "h2": [5.0, 5.0]})
    [moved] = Balancer(engine, now=now).cycle()
    assert (moved["vm"], moved["source"], moved["destination"]) == ("h1-vm0", "h1", "h2")
    assert "CPU above 80% for 2 min (lowest sample 90%)" in moved["reason"]


def test_evenly_distributed_moves_the_vm_using_the_most_cpu_to_the_least_loaded_host(
        engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 3, "h2": 1, "h3": 1})
    policy(engine, "evenly_distributed")
    balancer = Balancer(engine, now=now)
    # Idle: nothing is over the threshold.
    measure(engine, {"h1": [0.0, 0.0], "h2": [0.0, 0.0], "h3": [0.0, 0.0]})
    assert balancer.cycle() == []

    # h1-vm1 keeps two of h1's four CPUs busy; h3 is the least loaded.
    measure(engine, {"h1": [92.0, 95.0], "h2": [40.0, 45.0], "h3": [10.0, 10.0]},
            {"h1-vm0": 20.0, "h1-vm1": 200.0, "h1-vm2": 50.0, "h2-vm0": 150.0,
             "h3-vm0": 30.0})
    [moved] = balancer.cycle()
    assert (moved["vm"], moved["source"], moved["destination"]) == ("h1-vm1", "h1", "h3")
    assert moved["status"] == "succeeded"
    entry = engine.events.info(entity_type="vm", entity_name="h1-vm1")[-1]
    assert entry["message"].startswith("balancing: migrating vm h1-vm1 from h1 to h3 (host h1 "
                                       "CPU above 80% for 2 min (lowest sample 92%)")


def test_a_vm_that_migrated_within_the_cool_down_stays_put(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 1, "h2": 0})
    policy(engine, "evenly_distributed", vm_cooldown_minutes=30)
    measure(engine, {"h1": [95.0, 95.0], "h2": [5.0, 5.0]}, {"h1-vm0": 200.0})
    with engine.store.transaction() as session:
        vm = session.query(Vm).filter_by(name="h1-vm0").one()
        session.add(Migration(vm_id=vm.id, vm_name=vm.name, source="h2", destination="h1",
                              status="succeeded", finished_at=NOW - timedelta(minutes=20)))
    assert Balancer(engine, now=now).cycle() == []

    policy(engine, "evenly_distributed", vm_cooldown_minutes=15)
    [moved] = Balancer(engine, now=now).cycle()
    assert (moved["vm"], moved["destination"]) == ("h1-vm0", "h2")


def test_power_saving_consolidates_once_then_stays_still(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 1, "h2": 2, "h3": 0})
    policy(engine, "power_saving")
    measure(engine, {"h1": [1.0, 1.0], "h2": [2.0, 2.0], "h3": [0.0, 0.0]})
    balancer = Balancer(engine, now=now)

    [moved] = balancer.cycle()
    assert (moved["vm"], moved["source"], moved["destination"]) == ("h1-vm0", "h1", "h2")
    assert "emptying it so it can be powered down" in moved["reason"]
    # Never back onto the empty h1 or h3, cool-down or not.
    policy(engine, "power_saving", vm_cooldown_minutes=0)
    for _ in range(3):
        assert balancer.cycle() == []
    assert migrations.calls == [("h1-vm0", "h2")]


def test_an_up_host_without_cpu_history_holds_the_cpu_policies_back(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 1, "h2": 0, "h3": 0})
    policy(engine, "evenly_distributed")
    measure(engine, {"h1": [95.0, 95.0], "h2": [5.0, 5.0]}, {"h1-vm0": 200.0})
    assert Balancer(engine, now=now).cycle() == []  # h3 has no samples yet

    # A host in maintenance is neither a source nor a destination: it does not count.
    with engine.store.transaction() as session:
        session.query(Host).filter_by(name="h3").one().status = "Maintenance"
    [moved] = Balancer(engine, now=now).cycle()
    assert moved["destination"] == "h2"


def test_a_failed_migration_is_audited_and_the_loop_goes_on(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 3, "h2": 0})
    policy(engine, "vm_evenly_distributed", **VM_COUNT)
    migrations.failing = {"h1-vm0", "h1-vm1", "h1-vm2"}

    [attempt] = Balancer(engine).cycle()

    assert attempt["status"] == "failed"
    assert "connection reset" in attempt["error"]
    entry = engine.events.info(entity_type="vm", entity_name=attempt["vm"])[-1]
    assert entry["severity"] == "warning"
    assert entry["message"].startswith(f"balancing: migrating vm {attempt['vm']} from h1 to h2 "
                                       "failed: ")
    assert sorted(where(engine).values()) == ["h1", "h1", "h1"]


def test_run_balances_every_interval_until_stopped(engine, cluster, migrations):
    import threading

    crowd(engine, cluster, {"h1": 3, "h2": 0})
    policy(engine, "vm_evenly_distributed", **VM_COUNT)
    stop = threading.Event()
    loop = threading.Thread(target=Balancer(engine, Settings(interval_s=0.05)).run, args=(stop,))
    loop.start()
    try:
        for _ in range(100):
            if migrations.calls:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        loop.join(5)
    assert not loop.is_alive()
    assert len(migrations.calls) == 1
