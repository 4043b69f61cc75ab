"""The engine loop's heartbeats and VM status sync, against fake agents and a fake clock."""

from datetime import datetime, timedelta, timezone

import pytest

from engine_lib.monitoring import Intervals, Monitor

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def running(engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    vm = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256}, state="running")
    return agents["10.0.0.1"], vm.entity["id"]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def monitor(engine, clock):
    return Monitor(engine, Intervals(non_responsive_after_s=60), clock=clock)


def statuses(engine):
    return engine.hosts.info()[0]["status"], engine.vms.info("vm1")[0]["status"]


def test_a_silent_host_goes_connecting_then_non_responsive_and_its_vms_unknown(
        engine, running, monitor, clock):
    agent, _ = running
    monitor.cycle()
    assert statuses(engine) == ("Up", "Up")

    agent.reachable = False
    clock.now = T0 + timedelta(seconds=3)
    monitor.cycle()
    assert statuses(engine) == ("Connecting", "Up")  # nothing decided on one missed beat

    clock.now = T0 + timedelta(seconds=30)
    monitor.cycle()
    assert statuses(engine) == ("Connecting", "Up")

    clock.now = T0 + timedelta(seconds=61)
    monitor.cycle()
    assert statuses(engine) == ("NonResponsive", "Unknown")  # never Down on a guess

    agent.reachable = True
    clock.now = T0 + timedelta(seconds=70)
    monitor.cycle()
    assert statuses(engine) == ("Up", "Up")
    messages = [e["message"] for e in engine.events.info(entity_name="h1")]
    assert messages[-3:] == [
        "host is Connecting: agent 10.0.0.1 unreachable: connection refused",
        "host is NonResponsive: silent for 61s (agent 10.0.0.1 unreachable: connection refused)",
        "host is Up again (was NonResponsive)"]


def test_a_vm_the_host_no_longer_runs_is_down_with_a_reason(engine, running, monitor):
    agent, vm_id = running
    agent.vms[vm_id] = "Paused"
    monitor.cycle()
    assert statuses(engine) == ("Up", "Paused")
    del agent.vms[vm_id]
    monitor.cycle()
    vm = engine.vms.info("vm1")[0]
    assert (vm["status"], vm["host"], vm["exit_reason"]) == ("Down", None,
                                                             "not running on host h1")
    assert engine.events.info(entity_type="vm")[-1]["message"] == \
        "VM is Down: not running on host h1"


def test_hosts_in_maintenance_are_not_polled(engine, running, monitor, agents):
    from engine_lib.model import Host

    with engine.store.transaction() as session:
        session.query(Host).one().status = "Maintenance"
    running[0].reachable = False
    monitor.cycle()
    assert engine.hosts.info()[0]["status"] == "Maintenance"


def test_a_vm_whose_launch_is_in_flight_is_not_marked_down(engine, cluster, agents, monitor):
    from engine_lib.model import Vm

    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256}, state="present")
    with engine.store.transaction() as session:  # what _place commits before calling the agent
        vm = session.query(Vm).one()
        vm.status, vm.run_on_host = "WaitForLaunch", vm.cluster.hosts[0]
    monitor.cycle()
    vm = engine.vms.info("vm1")[0]
    assert (vm["status"], vm["host"]) == ("WaitForLaunch", "h1")
