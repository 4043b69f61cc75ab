"""Power saving with power management: the plan (pure), then the engine carrying it out
against fake agents and a fence device that is a script and a file.

The real thing (lab hosts switched off and on by the lab's fence agent) is
tests/system/test_power_saving.py.
"""

from datetime import UTC, datetime, timedelta

import pytest
from test_fencing import FENCE_AGENT, calls

from engine_lib.loop.ha import HighAvailability
from engine_lib.loop.power_saving import (
    CAPACITY,
    FORGET,
    PARK,
    POWER_OFF,
    HostView,
    PowerSaving,
    overloaded,
    plan,
)
from engine_lib.model import Host, Vm
from engine_lib.protocol.errors import Conflict, InvalidSpec, NoValidHost
from engine_lib.scheduling.policies import resolve
from engine_lib.services import maintenance, stats_history

INF = float("inf")
PM_ON = {"enable_automatic_host_power_management": 1, "host_power_off_grace_minutes": 10,
         "hosts_in_reserve": 1}


def policy(**values):
    return resolve("power_saving", {**PM_ON, **values})


def up(name, vms=0, cpu=1.0, state="", since=INF, pm=True):
    return HostView(name, "Up", vms, cpu, state, since, pm)


def held(name, state, since=INF, status="Maintenance"):
    return HostView(name, status, 0, 0.0, state, since, True)


def steps(hosts, pol=None, hot=False, can_spare=lambda host: True):
    return [(s.action, s.host) for s in plan(pol or policy(), hosts, overloaded=hot,
                                             can_spare=can_spare)]


# -- the plan ----------------------------------------------------------------------------------

def test_the_empty_host_beyond_the_reserve_is_parked_and_the_spare_stays_up():
    hosts = [up("h1", vms=2, cpu=30), up("h2"), up("h3")]
    assert steps(hosts) == [(PARK, "h3")]
    assert steps(hosts, policy(hosts_in_reserve=2)) == []
    assert steps(hosts, policy(hosts_in_reserve=0)) == [(PARK, "h3")]  # one host per round


def test_nothing_is_parked_unless_the_cluster_asks_for_it():
    hosts = [up("h1", vms=2), up("h2"), up("h3")]
    assert steps(hosts, policy(enable_automatic_host_power_management=0)) == []
    assert steps(hosts, resolve("evenly_distributed")) == []


def test_never_the_last_up_host_nor_a_host_with_vms():
    assert steps([up("h1")], policy(hosts_in_reserve=0)) == []
    assert steps([up("h1", vms=1), up("h2", vms=1)], policy(hosts_in_reserve=0)) == []
    # Two empty hosts, no reserve: one goes, the last Up one stays.
    assert steps([up("h1"), up("h2"), held("h3", "off")], policy(hosts_in_reserve=0)) == \
        [(PARK, "h2")]
    assert steps([up("h1"), held("h2", "maintenance", since=1), held("h3", "off")],
                 policy(hosts_in_reserve=0)) == []


def test_a_host_is_passed_over_when_it_is_busy_has_no_power_management_or_ha_needs_it():
    base = [up("h1", vms=1)]
    assert steps(base + [up("h2"), up("h3", cpu=25)]) == [(PARK, "h2")]  # h3 over low (20%)
    assert steps(base + [up("h2"), up("h3", pm=False)]) == [(PARK, "h2")]
    assert steps(base + [up("h2"), up("h3")], can_spare=lambda host: host != "h3") == \
        [(PARK, "h2")]
    assert steps(base + [up("h2"), up("h3")], can_spare=lambda host: False) == []


def test_nothing_is_parked_within_the_cpu_duration_of_a_host_coming_back():
    hosts = [up("h1", vms=1), up("h2"), up("h3", since=1.5)]
    assert steps(hosts) == []  # duration 2 min: the balancer has not had its chance
    assert steps(hosts, policy(cpu_overcommit_duration_minutes=1)) == [(PARK, "h3")]


def test_a_parked_host_is_switched_off_after_its_grace_period():
    hosts = [up("h1", vms=1), up("h2"), held("h3", "maintenance", since=9.5)]
    assert steps(hosts) == []
    assert steps(hosts, policy(host_power_off_grace_minutes=9)) == [(POWER_OFF, "h3")]
    # A power off an engine restart interrupted carries on at once.
    assert steps([up("h1", vms=1), up("h2"), held("h3", "stopping", since=0)]) == \
        [(POWER_OFF, "h3")]


def test_sustained_load_on_every_host_brings_one_back_and_parks_nothing():
    hosts = [up("h1", vms=3, cpu=95), up("h2", vms=2, cpu=90), held("h3", "off")]
    assert steps(hosts, hot=True) == [(CAPACITY, None)]
    [step] = plan(policy(), hosts, overloaded=True, can_spare=lambda h: True)
    assert step.reason == "every Up host over 80% CPU for 2 min"
    # One is on its way: no second host, and nothing parked meanwhile.
    starting = [up("h1", vms=3, cpu=95), held("h2", "starting"), held("h3", "off"), up("h4")]
    assert steps(starting, hot=True) == []
    assert steps(starting, hot=False) == []
    assert steps([up("h1", vms=3, cpu=95)], hot=True) == []  # nothing to bring back
    # A parked host is not switched off under load: it is the one brought back.
    assert steps([up("h1", vms=3, cpu=95), held("h2", "maintenance", since=60)], hot=True) == \
        [(CAPACITY, None)]


def test_a_host_an_operator_took_back_is_forgotten():
    assert steps([up("h1", vms=1), up("h2", state="off")]) == [(FORGET, "h2")]
    assert steps([up("h1", state="maintenance")], resolve("none")) == [(FORGET, "h1")]


@pytest.mark.parametrize("history, hot", [
    ({"h1": [90, 95, 99], "h2": [85, 81]}, True),
    ({"h1": [90, 95, 99], "h2": [85]}, False),  # not long enough yet
    ({"h1": [70, 95, 99], "h2": [85, 81]}, True),  # only the last 2 minutes count
    ({"h1": [90, 95, 80], "h2": [85, 81]}, False),  # at the threshold is not over it
    ({"h1": [90, 95, 99]}, False),  # h2 never sampled
])
def test_overloaded_means_every_up_host_over_the_threshold_for_the_whole_duration(history, hot):
    assert overloaded(history, ["h1", "h2"], 2, 80) is hot


def test_the_parameters_are_checked_naming_the_property():
    with pytest.raises(InvalidSpec) as err:
        resolve("power_saving", {"host_power_off_grace_minutes": 1441})
    assert err.value.field == "scheduling_policy_properties.host_power_off_grace_minutes"
    with pytest.raises(InvalidSpec) as err:
        resolve("power_saving", {"enable_automatic_host_power_management": 2})
    assert err.value.field == \
        "scheduling_policy_properties.enable_automatic_host_power_management"
    with pytest.raises(InvalidSpec) as err:
        resolve("evenly_distributed", {"enable_automatic_host_power_management": 1})
    assert "no such parameter" in err.value.message


# -- the engine carrying it out ----------------------------------------------------------------

class Clock:
    """Starts at the real time: an operator's activation records that (maintenance.leave)."""

    def __init__(self):
        self.now = datetime.now(UTC)

    def __call__(self):
        return self.now


@pytest.fixture
def devices(tmp_path, engine):
    """A fence device per host (a script and a file each), listed as an administrator would."""
    agent = tmp_path / "fence_test"
    agent.write_text(FENCE_AGENT)
    agent.chmod(0o755)
    engine.config.engine_dir.mkdir(parents=True, exist_ok=True)
    engine.config.fence_agents_file.write_text(f"{agent}\n")
    result = {}
    for name in ("h1", "h2", "h3"):
        (tmp_path / f"power-{name}").write_text("on")
        result[name] = {"agent": "fence_test", "options": {
            "plug": name, "state_file": str(tmp_path / f"power-{name}")}}
    return result


@pytest.fixture
def farm(engine, agents, devices, clock):
    """Cluster "ps" (power_saving, automatic power management, grace 10 min, one spare):
    h1 runs a 3 GiB VM, h2 and h3 are empty."""
    engine.clusters.ensure("ps", virt_type="qemu", scheduling_policy="power_saving",
                           scheduling_policy_properties=PM_ON)
    engine.hosts.ensure("h1", address="10.0.0.1", cluster="ps", power_management=devices["h1"])
    engine.vms.ensure({"name": "big", "cluster": "ps", "memory": 3072}, state="running")
    for name in ("h2", "h3"):
        engine.hosts.ensure(name, address=f"10.0.0.{name[1]}", cluster="ps",
                            power_management=devices[name])
    engine.power_saving.clock = clock
    return PowerSaving(engine, clock=clock)


@pytest.fixture
def clock():
    return Clock()


def state(engine) -> dict[str, tuple[str, str]]:
    with engine.store.transaction(commit=False) as session:
        return {h.name: (h.status, h.power_saving) for h in session.query(Host)}


def power(devices, name) -> str:
    with open(devices[name]["options"]["state_file"]) as f:
        return f.read()


def messages(engine, host):
    return [e["message"] for e in engine.events.info(entity_type="host", entity_name=host)]


def test_an_empty_host_is_parked_then_switched_off_after_the_grace_then_brought_back(
        engine, agents, devices, farm, clock):
    assert [(s.action, s.host) for s in farm.cycle()] == [(PARK, "h3")]
    assert state(engine) == {"h1": ("Up", ""), "h2": ("Up", ""),
                             "h3": ("Maintenance", "maintenance")}
    clock.now += timedelta(minutes=9)
    assert farm.cycle() == []  # the grace is not over; h2 is the spare
    clock.now += timedelta(minutes=1)
    assert [(s.action, s.host) for s in farm.cycle()] == [(POWER_OFF, "h3")]
    assert state(engine)["h3"] == ("Maintenance", "off")
    assert power(devices, "h3") == "off"
    assert [c["action"] for c in calls(devices["h3"])] == ["off", "status"]
    assert "power saving: host powered off (parked for 10 min of grace): power off confirmed " \
        "by fence_test status" in messages(engine, "h3")
    # Nothing more goes: h2 is the one spare, h1 runs a VM.
    clock.now += timedelta(hours=1)
    assert farm.cycle() == []

    agents["10.0.0.3"].reachable = False  # switched off: its agent is silent
    assert engine.power_saving.request_capacity("ps", "a test asks") == "h3"
    assert power(devices, "h3") == "on"
    assert state(engine)["h3"] == ("Maintenance", "starting")
    # Asked again while it starts: the same host, no second one switched on.
    assert engine.power_saving.request_capacity("ps", "again") == "h3"
    assert [c["action"] for c in calls(devices["h3"])] == ["off", "status", "on"]
    farm.cycle()  # not answering yet: it waits
    assert state(engine)["h3"] == ("Maintenance", "starting")
    agents["10.0.0.3"].reachable = True
    farm.cycle()
    assert state(engine)["h3"] == ("Up", "")
    assert "power saving: host is Up again (its agent answers after the power on)" in \
        messages(engine, "h3")
    # Back for capacity: nothing is parked for the policy's CPU duration, then h3 again.
    assert farm.cycle() == []
    clock.now += timedelta(minutes=2)
    assert [(s.action, s.host) for s in farm.cycle()] == [(PARK, "h3")]


def test_a_vm_no_host_can_take_brings_a_host_back_and_says_so(engine, agents, devices, farm,
                                                              clock):
    farm.cycle()
    clock.now += timedelta(minutes=10)
    farm.cycle()  # h3 off
    engine.vms.ensure({"name": "big2", "cluster": "ps", "memory": 3072}, state="running")
    assert engine.vms.info(name="big2")[0]["host"] == "h2"  # the spare takes it
    engine.vms.ensure({"name": "big3", "cluster": "ps", "memory": 3072})
    agents["10.0.0.3"].reachable = False
    with pytest.raises(NoValidHost) as err:
        engine.vms.ensure({"name": "big3"}, state="running")
    assert err.value.message.endswith("; host h3 is being brought back by power saving; the "
                                      "VM can start once it is Up")
    assert state(engine)["h3"] == ("Maintenance", "starting")
    assert any(m.startswith("power saving: host powered on (no host can start VM 'big3')")
               for m in messages(engine, "h3"))
    agents["10.0.0.3"].reachable = True
    farm.cycle()
    engine.vms.ensure({"name": "big3"}, state="running")
    assert engine.vms.info(name="big3")[0]["host"] == "h3"


def test_a_start_that_fails_with_no_host_held_by_power_saving_says_nothing_more(engine, farm):
    engine.vms.ensure({"name": "huge", "cluster": "ps", "memory": 8192})
    with pytest.raises(NoValidHost) as err:
        engine.vms.ensure({"name": "huge"}, state="running")
    assert "power saving" not in err.value.message


def test_a_host_ha_reservation_needs_stays_up(engine, farm):
    """h1's 3 GiB VM is highly available: one other host must stay up to restart it."""
    engine.clusters.ensure("ps", ha_reservation=True,
                           scheduling_policy_properties={**PM_ON, "hosts_in_reserve": 0})
    engine.vms.ensure({"name": "big", "high_availability": {"enabled": True}})
    assert [(s.action, s.host) for s in farm.cycle()] == [(PARK, "h3")]
    assert farm.cycle() == []  # h2 is where "big" would restart
    assert state(engine)["h2"] == ("Up", "")
    asked = []
    farm.can_spare = lambda hosts, ha_vms, host: asked.append((host, ha_vms)) or True
    assert [(s.action, s.host) for s in farm.cycle()] == [(PARK, "h2")]
    assert [(host, {h: [vm.name for vm in vms] for h, vms in ha_vms.items()})
            for host, ha_vms in asked] == [("h2", {"h1": ["big"], "h2": [], "h3": []})]


def test_sustained_load_on_every_host_brings_one_back(engine, agents, farm, clock):
    """The CPU history is the statistics history's raw minutes (stats_history)."""
    farm.cycle()
    clock.now += timedelta(minutes=10)
    farm.cycle()  # h3 off
    agents["10.0.0.3"].reachable = False

    def minute(percent):
        with engine.store.transaction() as session:
            hosts = {h.name: h for h in session.query(Host)}
            for name in ("h1", "h2"):
                hosts[name].used_cpu_percent = percent
            stats_history.record_minute(session, "host", [
                {"object_id": hosts[n].id, "cpu_percent": percent} for n in ("h1", "h2")],
                clock.now)

    minute(95)
    assert farm.cycle() == []  # one minute of the policy's two
    clock.now += timedelta(minutes=1)
    minute(70)
    assert farm.cycle() == []  # under the threshold in between
    clock.now += timedelta(minutes=1)
    minute(90)
    assert farm.cycle() == []
    clock.now += timedelta(minutes=1)
    minute(85)
    assert [(s.action, s.host) for s in farm.cycle()] == [(CAPACITY, None)]
    assert state(engine)["h3"] == ("Maintenance", "starting")
    assert any(m.startswith("power saving: host powered on (every Up host over 80% CPU for "
                            "2 min)") for m in messages(engine, "h3"))


def test_a_host_being_switched_off_cannot_be_activated_and_an_activated_one_is_let_go(
        engine, agents, farm, clock):
    farm.cycle()
    with engine.store.transaction() as session:  # as while its fence agent runs
        session.query(Host).filter_by(name="h3").one().power_saving = "stopping"
    with pytest.raises(Conflict) as err:
        maintenance.leave(engine, "h3")
    assert "being powered off by power saving" in err.value.message
    with engine.store.transaction() as session:
        session.query(Host).filter_by(name="h3").one().power_saving = "maintenance"
    maintenance.leave(engine, "h3")  # an operator takes it back during the grace
    assert state(engine)["h3"] == ("Up", "")
    clock.now += timedelta(minutes=1)
    assert farm.cycle() == []  # held up for the CPU duration after an activation
    clock.now += timedelta(minutes=2)
    assert [(s.action, s.host) for s in farm.cycle()] == [(PARK, "h3")]


def test_an_ha_restart_without_room_brings_a_host_back(engine, agents, devices, farm, clock):
    farm.cycle()
    clock.now += timedelta(minutes=10)
    farm.cycle()  # h3 off
    engine.vms.ensure({"name": "big2", "cluster": "ps", "memory": 3072}, state="running")
    engine.vms.ensure({"name": "ha-vm", "cluster": "ps", "memory": 3072,
                       "high_availability": {"enabled": True, "priority": 50}})
    with engine.store.transaction() as session:  # as its failed host left it: owed a restart
        session.query(Vm).filter_by(name="ha-vm").one().ha_restart_pending = True
    agents["10.0.0.3"].reachable = False
    HighAvailability(engine, ssh_key="/nonexistent").cycle()
    assert state(engine)["h3"] == ("Maintenance", "starting")
    [said] = [e["message"] for e in engine.events.info(entity_type="vm", entity_name="ha-vm")
              if e["message"].startswith("HA restart waits for a host")]
    assert said.endswith("host h3 is being brought back by power saving; the VM can start "
                         "once it is Up")
