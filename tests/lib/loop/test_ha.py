"""HA restarts against fake agents: proof before restart, priority order, no second copy.

The real thing (lab hosts, real faults) is tests/system/test_ha.py; these pin
down the engine's own decisions, including the fence-agents calls, with a fence
device that is a script and a file.
"""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from test_fencing import FENCE_AGENT, calls

from engine_lib.loop.fencing import Result
from engine_lib.loop.ha import HighAvailability, restart_order
from engine_lib.loop.monitoring import Intervals, Monitor

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def test_restart_order_is_priority_then_name():
    vms = [SimpleNamespace(name=n, high_availability={"enabled": True, "priority": p})
           for n, p in (("b", 10), ("a", 10), ("c", 90), ("d", 0))]
    assert [vm.name for vm in restart_order(vms)] == ["c", "a", "b", "d"]


H2_SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHTvFLHHIlbjUYdSOw1WMqKHRlK9Lr6qUL1D8skK0pCl"


@pytest.fixture
def device(tmp_path, engine):
    """The test's fence agent, listed in the engine's fence_agents as an administrator would."""
    agent = tmp_path / "fence_test"
    agent.write_text(FENCE_AGENT)
    agent.chmod(0o755)
    engine.config.engine_dir.mkdir(parents=True, exist_ok=True)
    engine.config.fence_agents_file.write_text(f"{agent}\n")
    (tmp_path / "power").write_text("on")
    return {"agent": "fence_test", "options": {"plug": "h2",
                                               "state_file": str(tmp_path / "power")}}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def loop(engine, cluster, agents, device, clock):
    """h2 runs three HA VMs and one ordinary VM; h1 and h3 are empty; one cycle runs the
    Monitor's cycle, then an HA pass (``kestrel engine run`` runs them side by side)."""
    engine.clusters.ensure(cluster, fencing_policy={"soft_fence_grace_s": 30})
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster, power_management=device,
                        ssh_host_keys=[H2_SSH_KEY])  # so the soft fence may log in
    for name, priority in (("ha-low", 1), ("ha-high", 90), ("ha-mid", 50)):
        engine.vms.ensure({"name": name, "cluster": cluster, "memory": 256,
                           "high_availability": {"enabled": True, "priority": priority}},
                          state="running")
    engine.vms.ensure({"name": "plain", "cluster": cluster, "memory": 256}, state="running")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.ensure("h3", address="10.0.0.3", cluster=cluster)
    monitor = Monitor(engine, Intervals(non_responsive_after_s=60), clock=clock)
    ha = HighAvailability(engine, ssh_key="/nonexistent", clock=clock)
    ha.fencer.soft_fence = lambda *args: Result(False, "exit 255: connection refused")

    def cycle(after_s: float):
        clock.now = T0 + timedelta(seconds=after_s)
        monitor.cycle()
        ha.cycle()
    cycle.ha = ha
    return cycle


def where(engine) -> dict:
    return {vm["name"]: (vm["status"], vm["host"]) for vm in engine.vms.info()}


def copies(agents, vm_id) -> int:
    """Running copies on the hosts that are on (a fenced host's fake keeps its list)."""
    return sum(1 for agent in agents.values() if agent.reachable and agent.vms.get(vm_id) == "Up")


def ha_messages(engine) -> list[tuple[str, str]]:
    return [(e["entity_name"], e["message"]) for e in engine.events.info(entity_type="vm")
            if "restarting highly available" in e["message"]]


def test_a_fenced_hosts_ha_vms_restart_elsewhere_by_priority_ordinary_ones_stay_down(
        engine, agents, loop, device):
    loop(0)
    agents["10.0.0.2"].reachable = False
    loop(3)
    loop(61)  # NonResponsive: soft fence fails, power fence off + status off, restarts
    state = where(engine)
    assert state["plain"] == ("Down", None)
    for name in ("ha-high", "ha-mid", "ha-low"):
        assert state[name][0] == "Up" and state[name][1] in ("h1", "h3")
    assert [name for name, _ in ha_messages(engine)] == ["ha-high", "ha-mid", "ha-low"]
    assert "power off confirmed by fence_test status" in ha_messages(engine)[0][1]
    assert [c["action"] for c in calls(device)] == ["off", "status", "on"]
    assert engine.hosts.info("h2")[0]["fence_state"] == "fenced_on"
    # The fenced host comes back (the fake still lists the VMs it ran before the fence:
    # the engine does not take them for running copies of VMs it restarted elsewhere).
    agents["10.0.0.2"].vms.clear()
    agents["10.0.0.2"].reachable = True
    loop(70)
    assert engine.hosts.info("h2")[0]["fence_state"] == ""
    assert where(engine) == state


def test_without_proof_nothing_is_restarted(engine, agents, loop):
    engine.hosts.ensure("h2", address="10.0.0.2", cluster="c1", power_management={})
    loop(0)
    agents["10.0.0.2"].reachable = False
    for second in (3, 61, 200, 400):
        loop(second)
    state = where(engine)
    assert {state[n] for n in ("ha-high", "ha-mid", "ha-low", "plain")} == {("Unknown", "h2")}
    assert ha_messages(engine) == []
    notes = [e["message"] for e in engine.events.info(entity_name="h2")]
    assert any("no power management configured" in m for m in notes)


def test_no_fencing_when_half_the_cluster_lost_connectivity(engine, agents, loop, device):
    loop(0)
    agents["10.0.0.2"].reachable = agents["10.0.0.3"].reachable = False
    loop(3)
    loop(61)
    assert {where(engine)[n][0] for n in ("ha-high", "plain")} == {"Unknown"}
    notes = [e["message"] for e in engine.events.info(entity_name="h2")]
    assert any("2 of 3 hosts of the cluster lost connectivity" in m for m in notes)
    assert calls_or_none(device) == []


def calls_or_none(device):
    try:
        return calls(device)
    except FileNotFoundError:
        return []


def test_an_agent_that_comes_back_keeps_its_vms_no_restart(engine, agents, loop):
    loop(0)
    agents["10.0.0.2"].reachable = False
    loop(3)
    loop.ha.fencer.soft_fence = lambda *args: Result(True, "exit 0")
    loop(61)  # soft fence sent: its grace runs; no proof of anything yet
    assert {where(engine)[n][0] for n in ("ha-high", "plain")} == {"Unknown"}
    agents["10.0.0.2"].reachable = True  # the agent restarted within the grace
    loop(62)
    state = where(engine)
    assert all(state[n] == ("Up", "h2") for n in ("ha-high", "ha-mid", "ha-low", "plain"))
    assert ha_messages(engine) == []
    assert not any(vm_id for a in ("10.0.0.1", "10.0.0.3") for vm_id in agents[a].vms)


def test_an_interrupted_restart_finds_its_copy_instead_of_starting_another(
        engine, agents, loop):
    loop(0)
    agents["10.0.0.2"].reachable = False
    loop(3)
    # The engine died right after the agent started ha-high on h1 (status still
    # WaitForLaunch in the database) and before anything else.
    vm = engine.vms.info("ha-high")[0]
    agents["10.0.0.1"].vms[vm["id"]] = "Up"
    with engine.store.transaction() as session:
        from engine_lib.model import Host, Vm

        row = session.get(Vm, vm["id"])
        row.status, row.ha_restart_pending = "WaitForLaunch", True
        row.run_on_host = session.query(Host).filter_by(name="h1").one()
    loop(61)
    assert where(engine)["ha-high"] == ("Up", "h1")
    assert copies(agents, vm["id"]) == 1
    assert "ha-high" not in [name for name, _ in ha_messages(engine)]
    assert [name for name, _ in ha_messages(engine)] == ["ha-mid", "ha-low"]


def test_a_proven_down_vm_that_runs_elsewhere_is_adopted_not_started(engine, agents, loop):
    loop(0)
    agents["10.0.0.2"].reachable = False
    loop(3)
    loop(61)
    vm = engine.vms.info("ha-high")[0]
    # As if an engine killed mid-restart had left the database behind the hosts.
    with engine.store.transaction() as session:
        from engine_lib.model import Vm

        row = session.get(Vm, vm["id"])
        row.status, row.run_on_host, row.ha_restart_pending = "Down", None, True
    loop(62)
    assert where(engine)["ha-high"] == ("Up", vm["host"])
    assert copies(agents, vm["id"]) == 1
    found = [e["message"] for e in engine.events.info(entity_name="ha-high")]
    assert any(f"found running on host {vm['host']}" in m for m in found)


def test_with_no_host_to_take_them_ha_vms_wait_pending_and_restart_once_one_joins(
        engine, agents, loop, monkeypatch):
    import engine_lib.loop.ha

    monkeypatch.setattr(engine_lib.loop.ha, "RETRY_AFTER_S", 0.0)
    loop(0)
    for name in ("h1", "h3"):  # the other hosts are full
        engine.hosts.ensure(name, address=f"10.0.0.{name[1]}", cluster="c1")
        agents[f"10.0.0.{name[1]}"].memory_mib = 0
    loop(1)
    agents["10.0.0.2"].reachable = False
    loop(3)
    loop(61)
    state = where(engine)
    assert {state[n] for n in ("ha-high", "ha-mid", "ha-low")} == {("Down", None)}
    notes = [e["message"] for e in engine.events.info(entity_name="ha-high")]
    assert any(m.startswith("HA restart waits for a host") for m in notes)
    agents["10.0.0.1"].memory_mib = 4096  # room again
    loop(62)
    loop(63)
    assert {where(engine)[n] for n in ("ha-high", "ha-mid", "ha-low")} == {("Up", "h1")}


def test_a_failing_power_fence_proves_nothing_and_is_retried_after_the_grace(
        engine, agents, loop, device):
    device["options"]["stuck"] = "yes"  # "off" succeeds but the device stays on
    engine.hosts.ensure("h2", address="10.0.0.2", cluster="c1", power_management=device)
    engine.clusters.ensure("c1", fencing_policy={"power_timeout_s": 0.5})
    loop(0)
    agents["10.0.0.2"].reachable = False
    loop(3)
    loop(61)
    loop(62)  # within the grace: no second try
    assert [c["action"] for c in calls(device)].count("off") == 1
    assert {where(engine)[n][0] for n in ("ha-high", "plain")} == {"Unknown"}
    loop(95)
    assert [c["action"] for c in calls(device)].count("off") == 2
    assert ha_messages(engine) == []
