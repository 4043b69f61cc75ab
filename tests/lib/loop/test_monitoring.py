"""The engine loop's heartbeats and VM status sync, against fake agents and a fake clock."""

import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FakeAgent

from engine_lib.agent.devices_hash import devices_hash
from engine_lib.loop.monitoring import Intervals, Monitor

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


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


def test_a_host_whose_libvirt_knows_no_uuid_stays_up(engine, running, monitor):
    agent, _ = running
    facts = agent.host_info()
    agent.host_info = lambda timeout=None: {**facts, "host_uuid": None, "hostname": None}
    monitor.cycle()
    assert statuses(engine) == ("Up", "Up")
    assert engine.hosts.info()[0]["host_uuid"] == ""


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


def test_a_vm_its_host_reports_down_is_removed_from_that_host(engine, running, monitor):
    agent, vm_id = running
    agent.vms[vm_id] = "Down"  # the guest powered itself off; the domain is still defined
    monitor.cycle()
    assert statuses(engine) == ("Up", "Down")
    assert vm_id not in agent.vms  # as a stop leaves it: nothing defined, disks free


def test_a_leftover_down_vm_is_forgotten_and_a_running_stranger_left_alone(
        engine, running, monitor):
    agent, vm_id = running
    agent.vms["left-over"] = "Down"  # e.g. defined before its host was fenced
    agent.vms["stranger"] = "Up"     # running, unknown to the engine: not ours to touch
    monitor.cycle()
    assert sorted(agent.vms) == sorted([vm_id, "stranger"])
    assert statuses(engine) == ("Up", "Up")


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


def _switch_to(engine, vm_name: str, host_name: str) -> None:
    """What a finished migration writes: the VM runs on its destination, Up."""
    from engine_lib.model import Host, Vm

    with engine.store.transaction() as session:
        vm = session.query(Vm).filter_by(name=vm_name).one()
        vm.run_on_host = session.query(Host).filter_by(name=host_name).one()
        vm.status = "Up"


def test_a_vm_poll_answered_before_a_migration_switched_the_vm_here_changes_nothing(
        engine, running, agents, monitor):
    source, vm_id = running
    engine.hosts.ensure("h2", address="10.0.0.2", cluster="c1")
    destination = agents["10.0.0.2"]
    listed = destination.list_vms

    def list_then_switch():
        answer = listed()  # taken before the incoming copy existed on h2
        _switch_to(engine, "vm1", "h2")
        del source.vms[vm_id]
        destination.vms[vm_id] = "Up"
        return answer

    destination.list_vms = list_then_switch
    monitor.cycle()
    vm = engine.vms.info("vm1")[0]
    assert (vm["status"], vm["host"]) == ("Up", "h2")  # not Down on an answer from before
    assert vm_id in destination.vms  # nor removed from where it runs

    destination.list_vms = listed
    del destination.vms[vm_id]  # the next poll's answer is the truth
    monitor.cycle()
    vm = engine.vms.info("vm1")[0]
    assert (vm["status"], vm["host"]) == ("Down", None)


def test_an_incoming_status_reported_after_the_switch_is_history(engine, running, agents,
                                                                  monitor):
    source, vm_id = running
    engine.hosts.ensure("h2", address="10.0.0.2", cluster="c1")
    _switch_to(engine, "vm1", "h2")
    del source.vms[vm_id]
    agents["10.0.0.2"].vms[vm_id] = "MigratingTo"  # the answer was on its way before the switch
    monitor.cycle()
    assert engine.vms.info("vm1")[0]["status"] == "Up"


# -- device matching on the VM poll ---------------------------------------------------------

FOREIGN_NIC = ("<interface type='bridge'><mac address='52:54:00:5e:00:42'/>"
               "<source bridge='br0'/><model type='virtio'/><alias name='net0'/>"
               "<address type='pci' domain='0x0000' bus='0x00' slot='0x09' function='0x0'/>"
               "</interface>")


class MatchingAgent(FakeAgent):
    """A fake agent that reports a devices hash and a live XML (the XML it was sent)."""

    def __init__(self, name):
        super().__init__(name)
        self.extra_devices = ""
        self.xml_reads = 0

    def live_xml(self):
        return self.last_xml.replace("</devices>", self.extra_devices + "</devices>")

    def list_vms(self):
        return [{**vm, "devices_hash": devices_hash(self.live_xml())}
                for vm in super().list_vms()]

    def vm_xml(self, vm_id):
        self.xml_reads += 1
        return self.live_xml()


@pytest.fixture
def matching(engine, cluster, agents):
    agent = agents["10.0.0.1"] = MatchingAgent("10.0.0.1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256,
                       "nics": [{"name": "nic1", "network": "br0"}]}, state="running")
    agent.xml_reads = 0
    return agent


def test_the_live_xml_is_read_only_when_the_devices_hash_changed(engine, matching, monitor):
    monitor.cycle()
    assert matching.xml_reads == 1  # never matched by the loop: read once
    monitor.cycle()
    monitor.cycle()
    assert matching.xml_reads == 1  # same hash: nothing to read

    matching.extra_devices = FOREIGN_NIC
    monitor.cycle()
    assert matching.xml_reads == 2
    foreign = [d for d in engine.vms.info("vm1")[0]["devices"] if not d["managed"]]
    assert [(d["type"], d["alias"], d["address"]["slot"]) for d in foreign] == [
        ("interface", "net0", "0x09")]
    assert engine.events.info(entity_name="vm1")[-1]["message"] == (
        "picked up unmanaged interface 52:54:00:5e:00:42 at pci 0000:00:09.0: "
        "hotplugged outside the engine (no ua- alias)")
    # Not the engine's NIC: its next domain XML leaves it out, its MAC stays taken.
    assert "52:54:00:5e:00:42" not in engine.vms.domain_xml("vm1")

    matching.extra_devices = ""
    monitor.cycle()
    assert [d for d in engine.vms.info("vm1")[0]["devices"] if not d["managed"]] == []


def test_our_nic_missing_from_the_live_xml_is_marked_unplugged_and_not_rendered(
        engine, matching, monitor):
    nic = engine.vms.info("vm1")[0]["nics"][0]
    matching.last_xml = ET.tostring(_without_alias(matching.last_xml, nic["alias"]),
                                    encoding="unicode")
    monitor.cycle()
    device = next(d for d in engine.vms.info("vm1")[0]["devices"] if d["id"] == nic["id"])
    assert device["plugged"] is False
    assert nic["alias"] not in engine.vms.domain_xml("vm1")
    assert engine.events.info(entity_name="vm1")[-1]["message"] == (
        f"interface 'nic1' {nic['mac']} marked unplugged: not in the live XML: unplugged "
        "from the running VM")
    # The user's spec still lists it: a re-run keeps the row, and changes nothing.
    assert not engine.vms.ensure({"name": "vm1", "nics": [{"name": "nic1",
                                                           "network": "br0"}]}).changed


def _without_alias(xml: str, alias: str) -> ET.Element:
    root = ET.fromstring(xml)
    devices = root.find("devices")
    for element in list(devices):
        found = element.find("alias")
        if found is not None and found.get("name") == alias:
            devices.remove(element)
    return root


def test_the_loop_and_a_module_updating_the_same_vm_at_once_lose_no_update(
        engine, matching, monitor):
    """Status and device writes of the loop race a module's change of the same VM's settings
    and NIC (SQLite and PostgreSQL): every write succeeds and none is overwritten. A cycle
    whose VM changed while the agent answered leaves it to the next cycle."""
    vm_id = engine.vms.info("vm1")[0]["id"]
    errors, done = [], threading.Event()
    cycles = 0

    def loop():
        nonlocal cycles
        try:
            while not done.is_set() or cycles < 10:
                cycles += 1
                matching.vms[vm_id] = "Paused" if cycles % 2 else "Up"
                matching.extra_devices = FOREIGN_NIC if cycles % 3 else ""
                monitor.cycle()
        except Exception as err:
            errors.append(err)

    racing = threading.Thread(target=loop)
    racing.start()
    try:
        for index in range(20):
            outcome = engine.vms.ensure({"name": "vm1", "description": f"run {index}",
                                         "nics": [{"name": "nic1", "network": "br0",
                                                   "mtu": 1400 + index}]})
            assert outcome.changed
    finally:
        done.set()
        racing.join()
    assert errors == []
    for status, extra in (("Paused", FOREIGN_NIC), ("Up", "")):
        matching.vms[vm_id], matching.extra_devices = status, extra
        monitor.cycle()  # nobody else writes now: the loop's write is there once it returns
        vm = engine.vms.info("vm1")[0]
        assert (vm["description"], vm["nics"][0]["mtu"]) == ("run 19", 1419)
        assert vm["status"] == status
        assert any(not d["managed"] for d in vm["devices"]) == bool(extra)
