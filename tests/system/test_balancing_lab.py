"""The CPU balancers on the lab: evenly_distributed relieves a busy host, a moved VM cools
down, power_saving consolidates once and then stays still.

Real: the guests, the agents, every live migration the balancer starts, the
migrations table the cool-down reads, the audit log. Written by the test: the CPU
figures (host_statistics' Host.used_cpu_percent, the raw history, vm_statistics),
as the statistics poll records them, at a clock the test holds still. A guest's
measured CPU on this shared machine swings too much for the thresholds to be
crossed on cue, and the decisions under test are the balancer's, not the meters'.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from test_migration import copies, tiny_guest, wait_for_console

from engine_lib.loop.balancer import Balancer
from engine_lib.model import Host, StatsSample, Vm, VmStatistics, utcnow

pytestmark = pytest.mark.lab


class Clock:
    def __init__(self):
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def measure(engine, clock, hosts: dict[str, float], vms: dict[str, float]):
    """Each host's CPU for this minute (the policies' 1-minute duration) and each VM's
    share of its host's CPUs, in percent."""
    with engine.store.transaction() as session:
        for name, cpu in hosts.items():
            host = session.query(Host).filter_by(name=name).one()
            host.used_cpu_percent = cpu
            session.query(StatsSample).filter_by(object_id=host.id).delete()
            session.add(StatsSample(kind="host", object_id=host.id, resolution="raw",
                                    at=clock.now.replace(second=0, microsecond=0),
                                    cpu_percent=cpu))
        for name, share in vms.items():
            vm = session.query(Vm).filter_by(name=name).one()
            session.merge(VmStatistics(vm_id=vm.id, host_id=vm.run_on_host_id,
                                       cpu_percent=share * vm.run_on_host.cpus))


@pytest.fixture
def guests(engine, agents, lab_guest):
    """bal-hot and bal-calm on h1 (registered alone while they start), bal-o1 and bal-o2
    pinned to h2."""
    engine.clusters.ensure("lab", virt_type="qemu", migration_encrypted=False)
    address = {agent.name: agent.address for agent in agents}
    engine.hosts.ensure("h1", address=address["h1"], cluster="lab")
    specs = [tiny_guest("bal-hot"), tiny_guest("bal-calm"),
             tiny_guest("bal-o1", placement={"hosts": ["h2"]}),
             tiny_guest("bal-o2", placement={"hosts": ["h2"]})]
    created = []
    try:
        for spec in specs[:2]:
            created.append(engine.vms.ensure(spec, state="running").entity)
        engine.hosts.ensure("h2", address=address["h2"], cluster="lab")
        engine.hosts.ensure("h3", address=address["h3"], cluster="lab")
        for spec in specs[2:]:
            created.append(engine.vms.ensure(spec, state="running").entity)
        # The two that move are migrated booted (four guests boot slowly together under TCG).
        for name in ("bal-hot", "bal-calm"):
            wait_for_console(engine, name, "kestrel-guest: up", timeout=240)
        yield created
    finally:
        for vm in created:
            engine.vms.ensure({"name": vm["name"]}, state="absent")
        assert all(copies(agents, vm["id"]) == {} for vm in created), "a domain stayed behind"


def where(engine) -> dict[str, str]:
    return {vm["name"]: vm["host"] for vm in engine.vms.info()}


def moves(engine, vm: str) -> list[str]:
    return [e["message"] for e in engine.events.info(entity_type="vm", entity_name=vm)
            if e["message"].startswith("balancing: migrating")]


def test_cpu_balancing_moves_once_cools_down_and_consolidates(engine, agents, guests):
    clock = Clock()
    balancer = Balancer(engine, now=clock)
    idle = {"bal-hot": 1.0, "bal-calm": 1.0, "bal-o1": 1.0, "bal-o2": 1.0}

    # evenly_distributed: h1 over 80% for the minute; bal-hot takes half of it.
    engine.clusters.ensure("lab", scheduling_policy="evenly_distributed",
                           scheduling_policy_properties={"cpu_overcommit_duration_minutes": 1})
    measure(engine, clock, {"h1": 95.0, "h2": 40.0, "h3": 5.0}, {**idle, "bal-hot": 50.0})
    [moved] = balancer.cycle()
    # To h3, the least loaded host (h2 would reach 90%).
    assert (moved["vm"], moved["source"], moved["destination"], moved["status"]) == (
        "bal-hot", "h1", "h3", "succeeded")
    hot = next(vm for vm in guests if vm["name"] == "bal-hot")
    assert copies(agents, hot["id"]) == {"h3": "running"}
    assert moves(engine, "bal-hot") == [
        f"balancing: migrating vm bal-hot from h1 to h3 ({moved['reason']})"]
    assert moved["reason"].startswith("host h1 CPU above 80% for 1 min (lowest sample 95%)")

    # Now h3 is the busy one, but bal-hot has just moved: it stays (30 min cool-down).
    measure(engine, clock, {"h1": 10.0, "h2": 40.0, "h3": 60.0 + 35.0},
            {**idle, "bal-hot": 50.0})
    assert balancer.cycle() == []

    # power_saving, a day later: all hosts idle. h1 and h3 are emptied onto h2 (the one
    # with the most VMs), one VM a round; then nothing moves, round after round.
    clock.now += timedelta(days=1)
    engine.clusters.ensure("lab", scheduling_policy="power_saving",
                           scheduling_policy_properties={"cpu_overcommit_duration_minutes": 1})
    measure(engine, clock, {"h1": 3.0, "h2": 15.0, "h3": 2.0}, idle)
    rounds = [balancer.cycle() for _ in range(4)]
    assert [[(m["vm"], m["source"], m["destination"], m["status"]) for m in r]
            for r in rounds] == [[("bal-calm", "h1", "h2", "succeeded")],
                                 [("bal-hot", "h3", "h2", "succeeded")], [], []]
    assert set(where(engine).values()) == {"h2"}
    assert all(copies(agents, vm["id"]) == {"h2": "running"} for vm in guests)
    assert "emptying it so it can be powered down" in moves(engine, "bal-calm")[0]
    assert [r["destination"] for r in engine.migrations.history("bal-hot")] == ["h3", "h2"]
