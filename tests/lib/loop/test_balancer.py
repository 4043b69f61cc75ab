"""The engine loop's balancer, with fake agents and a fake migration service (real lab: tests/system)."""

import pytest
from fake_migrations import FakeMigrations

from engine_lib.loop.balancer import Balancer, Settings
from engine_lib.model import Host

VM_COUNT = {"high_vm_count": 1, "migration_threshold": 1}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


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


def test_cpu_load_must_last_the_policy_duration_before_a_vm_moves(engine, cluster, migrations):
    crowd(engine, cluster, {"h1": 2, "h2": 0})
    policy(engine, "evenly_distributed", high_utilization=80, cpu_overcommit_duration_minutes=2)
    with engine.store.transaction() as session:
        session.query(Host).filter_by(name="h1").one().used_cpu_percent = 95.0
    clock = Clock()
    balancer = Balancer(engine, clock=clock)

    assert balancer.cycle() == []  # one sample: not yet "for 2 minutes"
    clock.now += 30
    assert balancer.cycle() == []  # still one sample a minute
    clock.now += 30

    [moved] = balancer.cycle()
    assert (moved["source"], moved["destination"]) == ("h1", "h2")
    assert "CPU above 80% for 2 min" in moved["reason"]


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
