"""Suspend to disk, resume, reboot: the engine's decisions, with fake agents."""

import pytest

from engine_lib.protocol.errors import Conflict

SPEC = {"name": "vm1", "cluster": "c1", "memory": 256,
        "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"}]}


class Calls:
    """Adds the hibernation API to a FakeAgent and records what it was asked."""

    def __init__(self, agent):
        self.agent, self.log = agent, []
        agent.hibernate_vm = self.hibernate_vm
        agent.restore_vm = self.restore_vm
        agent.reboot_vm = self.reboot_vm

    def hibernate_vm(self, vm_id, memory_volume):
        self.log.append(("hibernate", vm_id, memory_volume))
        self.agent.vms[vm_id] = "Down"
        return {"id": vm_id, "status": "Down", "exit_reason": "saved"}

    def restore_vm(self, xml, memory_volume, keep_memory=False):
        self.log.append(("restore", memory_volume))
        return self.agent.start_vm(xml)

    def reboot_vm(self, vm_id):
        self.log.append(("reboot", vm_id))
        return {"id": vm_id, "status": "Up", "method": "acpi"}


@pytest.fixture
def running(engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure(SPEC, state="running")
    return Calls(agents["10.0.0.1"])


def test_suspend_saves_memory_next_to_the_disks_and_running_restores_it(engine, running):
    outcome = engine.vms.ensure(SPEC, state="suspended")
    vm = outcome.entity
    assert outcome.changed and (vm["status"], vm["host"]) == ("Suspended", None)
    memory = vm["memory_volume"]
    assert memory["domain"] == "data"
    assert running.log == [("hibernate", vm["id"], memory)]
    assert running.agent.vms == {}  # removed from the host, as a stop does
    assert engine.vms.ensure(SPEC, state="suspended").changed is False

    outcome = engine.vms.ensure(SPEC, state="running")
    assert outcome.changed and outcome.entity["status"] == "Up"
    assert running.log[-1] == ("restore", memory)
    assert outcome.entity["memory_volume"] is None  # the agent deleted it after the restore


def test_check_mode_predicts_suspend_and_changes_nothing(engine, running):
    outcome = engine.vms.ensure(SPEC, state="suspended", check_mode=True)
    assert outcome.changed and outcome.entity["status"] == "Suspended"
    assert running.log == [] and engine.vms.info("vm1")[0]["status"] == "Up"


def test_a_vm_that_is_not_running_cannot_be_suspended_or_rebooted(engine, running):
    engine.vms.ensure(SPEC, state="stopped")
    for state in ("suspended", "rebooted"):
        with pytest.raises(Conflict, match="not running"):
            engine.vms.ensure(SPEC, state=state)
    assert running.log == []


def test_a_vm_with_nowhere_to_save_its_memory_is_refused(engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure({"name": "bare", "cluster": cluster, "memory": 256}, state="running")
    calls = Calls(agents["10.0.0.1"])
    with pytest.raises(Conflict, match="nowhere to save its memory"):
        engine.vms.ensure({"name": "bare"}, state="suspended")
    assert calls.log == [] and engine.vms.info("bare")[0]["status"] == "Up"


def test_stopping_or_removing_a_suspended_vm_discards_its_memory(engine, running):
    memory = engine.vms.ensure(SPEC, state="suspended").entity["memory_volume"]
    stopped = engine.vms.ensure(SPEC, state="stopped")
    assert stopped.changed and stopped.entity["status"] == "Down"
    assert stopped.entity["memory_volume"] is None
    assert running.agent.deleted_volumes == [memory]

    engine.vms.ensure(SPEC, state="running")
    memory = engine.vms.ensure(SPEC, state="suspended").entity["memory_volume"]
    engine.vms.ensure({"name": "vm1"}, state="absent")
    assert memory in running.agent.deleted_volumes


def test_reboot_is_always_a_change(engine, running):
    outcome = engine.vms.ensure(SPEC, state="rebooted")
    assert outcome.changed and outcome.entity["status"] == "Up"
    assert running.log == [("reboot", outcome.entity["id"])]
    messages = [e["message"] for e in engine.events.info(entity_name="vm1")]
    assert "VM rebooted on host h1 (acpi)" in messages
