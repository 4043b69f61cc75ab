"""A start whose answer is lost, and domains the engine does not run where they run: the
engine's decisions against fake agents (the real slow hook is tests/system/test_ghost_vm.py).

The VM must stay waiting on the host it was sent to, holding its claim, until that
host answers for it; nothing places it a second time meanwhile; and the Monitor adopts
or destroys running domains of ours that it does not own."""

import xml.etree.ElementTree as ET

import pytest
from conftest import FakeAgent

from engine_lib.loop.ha import HighAvailability
from engine_lib.loop.monitoring import Intervals, Monitor
from engine_lib.model import Vm
from engine_lib.protocol.errors import AgentUnreachable, Conflict
from engine_lib.protocol.statuses import VmStatus

SPEC = {"name": "vm1", "cluster": "c1", "memory": 256}
SAVED = {"domain": "data", "image": "i-1", "volume": "v-1"}


class LostAnswer(FakeAgent):
    """An agent that takes start and restore calls but whose answer the engine never gets
    (the client timed out: a slow hook); it lists the VM as ``listed`` meanwhile (None:
    not at all, as a request that never reached it)."""

    def __init__(self, name, listed="WaitForLaunch"):
        super().__init__(name)
        self.listed = listed
        self.starts: list[str] = []

    def start_vm(self, xml, mode="fresh"):
        self._check()
        vm_id = ET.fromstring(xml).findtext("uuid")
        self.starts.append(vm_id)
        self.last_xml = xml
        if self.listed:
            self.vms[vm_id] = self.listed
        raise AgentUnreachable(f"agent {self.name} unreachable: no answer within 2 s",
                               cause="timeout")

    def restore_vm(self, xml, memory_volume, keep_memory=False):
        return self.start_vm(xml, "restore")


@pytest.fixture
def hosts(engine, cluster, agents):
    """h1 and h2, each an agent whose start answers are lost."""
    for i in (1, 2):
        agents[f"10.0.0.{i}"] = LostAnswer(f"h{i}")
        engine.hosts.ensure(f"h{i}", address=f"10.0.0.{i}", cluster=cluster)
    return agents


@pytest.fixture
def monitor(engine):
    return Monitor(engine, Intervals())


def vm1(engine) -> dict:
    return engine.vms.info("vm1")[0]


def agent_of(engine, agents, host: str) -> LostAnswer:
    return agents[engine.hosts.info(host)[0]["address"]]


def all_starts(agents) -> int:
    return sum(len(agent.starts) for agent in agents.values())


def test_a_start_whose_answer_is_lost_waits_on_its_host_and_is_not_placed_again(
        engine, hosts, monitor):
    with pytest.raises(AgentUnreachable) as info:
        engine.vms.ensure(SPEC, state="running")
    vm = vm1(engine)
    assert (vm["status"], vm["host"]) == ("WaitForLaunch", vm["host"]) and vm["host"]
    assert f"waits on host {vm['host']}" in info.value.message
    # A second `state: running` is refused: no second placement, on any host.
    with pytest.raises(Conflict) as info:
        engine.vms.ensure(SPEC, state="running")
    assert "not started again" in info.value.message
    assert all_starts(hosts) == 1
    # The agent still lists it as starting: it waits, holding its claim.
    monitor.cycle()
    assert (vm1(engine)["status"], vm1(engine)["host"]) == ("WaitForLaunch", vm["host"])
    # The host confirms it runs: Up there, and a start is a no-op again.
    agent_of(engine, hosts, vm["host"]).vms[vm["id"]] = "Up"
    monitor.cycle()
    assert (vm1(engine)["status"], vm1(engine)["host"]) == ("Up", vm["host"])
    assert engine.vms.ensure(SPEC, state="running").changed is False
    assert all_starts(hosts) == 1


def test_a_lost_start_the_host_does_not_list_is_down_by_its_word_then_starts_anew(
        engine, hosts, monitor):
    for agent in hosts.values():
        agent.listed = None  # the request never reached it
    with pytest.raises(AgentUnreachable):
        engine.vms.ensure(SPEC, state="running")
    assert vm1(engine)["status"] == "WaitForLaunch"
    monitor.cycle()
    vm = vm1(engine)
    assert (vm["status"], vm["host"]) == ("Down", None)
    assert vm["exit_reason"].endswith("reports no start of it")
    with pytest.raises(AgentUnreachable):  # the claim is gone: a start places it again
        engine.vms.ensure(SPEC, state="running")
    assert all_starts(hosts) == 2


def test_a_restore_whose_answer_is_lost_keeps_its_memory_until_the_host_answers(
        engine, hosts, monitor):
    engine.vms.ensure(SPEC)
    with engine.store.transaction() as session:
        row = session.query(Vm).filter_by(name="vm1").one()
        row.status, row.memory_volume = VmStatus.SUSPENDED, dict(SAVED)
    for agent in hosts.values():
        agent.listed = "RestoringState"
    with pytest.raises(AgentUnreachable):
        engine.vms.ensure(SPEC, state="running")
    vm = vm1(engine)
    assert (vm["status"], vm["memory_volume"]) == ("WaitForLaunch", SAVED)
    monitor.cycle()
    assert vm1(engine)["status"] == "RestoringState"
    agent_of(engine, hosts, vm["host"]).vms[vm["id"]] = "Down"  # the restore failed there
    monitor.cycle()
    vm = vm1(engine)
    assert (vm["status"], vm["host"], vm["memory_volume"]) == ("Suspended", None, SAVED)


def test_an_ha_restart_whose_answer_is_lost_is_not_started_again_elsewhere(engine, hosts):
    for agent in hosts.values():
        agent.listed = None  # whatever the agent does, only its word settles the VM
    engine.vms.ensure({**SPEC, "high_availability": {"enabled": True, "priority": 50}})
    with engine.store.transaction() as session:
        session.query(Vm).filter_by(name="vm1").one().ha_restart_pending = True
    ha = HighAvailability(engine, ssh_key="/nonexistent")
    ha.cycle()
    assert all_starts(hosts) == 1
    sent_to = vm1(engine)["host"]
    for _ in range(2):
        ha._retry_at.clear()  # as if the retry pause had passed
        ha.cycle()
    assert all_starts(hosts) == 1
    assert (vm1(engine)["status"], vm1(engine)["host"]) == ("WaitForLaunch", sent_to)


# -- running domains the engine does not run on that host ---------------------------------------

@pytest.fixture
def two_hosts(engine, cluster, agents):
    for i in (1, 2):
        agents[f"10.0.0.{i}"] = FakeAgent(f"h{i}")
        engine.hosts.ensure(f"h{i}", address=f"10.0.0.{i}", cluster=cluster)
    return agents


def test_a_stray_copy_of_a_vm_that_runs_elsewhere_is_destroyed(engine, two_hosts, monitor):
    vm = engine.vms.ensure(SPEC, state="running").entity
    owner = agent_of(engine, two_hosts, vm["host"])
    other = next(agent for agent in two_hosts.values() if agent is not owner)
    other.vms[vm["id"]], other.last_xml = "Up", owner.last_xml
    monitor.cycle()
    assert vm["id"] not in other.vms  # destroyed and removed there
    assert owner.vms[vm["id"]] == "Up"
    assert (vm1(engine)["status"], vm1(engine)["host"]) == ("Up", vm["host"])
    assert any("stray copy" in e["message"] and e["severity"] == "warning"
               for e in engine.events.info(entity_name="vm1"))


def test_a_running_domain_of_a_vm_the_engine_runs_nowhere_is_adopted(engine, two_hosts, monitor):
    engine.vms.ensure(SPEC, state="running")
    vm = engine.vms.ensure(SPEC, state="stopped").entity  # Down, no host; its XML known
    agent = two_hosts["10.0.0.2"]
    agent.last_xml = next(a.last_xml for a in two_hosts.values() if hasattr(a, "last_xml"))
    agent.vms[vm["id"]] = "Up"
    monitor.cycle()
    assert (vm1(engine)["status"], vm1(engine)["host"]) == ("Up", "h2")
    assert agent.vms[vm["id"]] == "Up"


def test_a_domain_without_our_metadata_is_left_alone(engine, two_hosts, monitor):
    vm = engine.vms.ensure(SPEC).entity
    agent = two_hosts["10.0.0.1"]
    agent.vms[vm["id"]] = "Up"
    agent.last_xml = f"<domain type='kvm'><name>x</name><uuid>{vm['id']}</uuid></domain>"
    monitor.cycle()
    assert (vm1(engine)["status"], vm1(engine)["host"]) == ("Down", None)
    assert agent.vms[vm["id"]] == "Up"


def test_a_start_that_never_reached_the_host_releases_the_claim_at_once(engine, hosts):
    for agent in hosts.values():
        agent.reachable = False  # connection refused: nothing was sent
    with pytest.raises(AgentUnreachable):
        engine.vms.ensure(SPEC, state="running")
    vm = vm1(engine)
    assert (vm["status"], vm["host"]) == ("Down", None)
    assert all_starts(hosts) == 0
