"""The agent's hooks, registry, events and recovery against real libvirtd and QEMU in lab hosts."""

from __future__ import annotations

import os
import signal
import time
import xml.etree.ElementTree as ET
from functools import partial

import pytest
from agent_fixtures import guest_domain_xml, is_alive, restart_agent

from engine_lib.agent.states import VmStatus

pytestmark = pytest.mark.lab

BOOT_TIMEOUT = 90.0
HOOK_DIR = "/etc/kestrel/hooks/before_vm_start"
VIRSH = ["virsh", "-c", "qemu:///system"]


def wait_for_console(client, vm_id: str, text: str) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        log = client.console_log(vm_id, 65536)
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.5)


def wait_for_status(client, vm_id: str, status: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = client.vm_status(vm_id)
        if report["status"] == status or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


@pytest.fixture
def cleanup(agents):
    """VMs to destroy, remove and whose volumes to delete after the test: (agent, id, volume)."""
    started: list[tuple] = []
    yield started
    for agent, vm_id, volume in started:
        client = agent.client()
        for step in (partial(client.destroy_vm, vm_id), partial(client.remove_vm, vm_id),
                     partial(client.delete_volumes, [volume])):
            try:
                step()
            except Exception:
                pass


def start(agent, cleanup) -> str:
    xml, volume = guest_domain_xml()
    vm_id = ET.fromstring(xml).findtext("uuid")
    cleanup.append((agent, vm_id, volume))
    assert agent.client().start_vm(xml)["started"] is True
    return vm_id


def test_a_before_vm_start_hook_edits_the_live_domain(agents, lab_guest, cleanup):
    agent = agents[0]
    script = f"{HOOK_DIR}/50_description"
    agent.run(["mkdir", "-p", HOOK_DIR])
    agent.run(["chmod", "755", "/etc/kestrel/hooks", HOOK_DIR])
    agent.run(["sh", "-c", 'cat > "$1" && chmod 755 "$1"', "install", script],
              input=b'#!/bin/sh\nsed -i "s|</name>|</name><description>hooked $vmId'
                    b'</description>|" "$_hook_domxml"\n')
    try:
        vm_id = start(agent, cleanup)
    finally:
        agent.run(["rm", "-f", script])
    live = ET.fromstring(agent.client().vm_xml(vm_id))
    assert live.findtext("description") == f"hooked {vm_id}"


def test_a_guest_that_powers_itself_off_is_down_with_user_shutdown(agents, lab_guest, cleanup):
    agent = agents[-1]
    client = agent.client()
    vm_id = start(agent, cleanup)
    assert "kestrel-guest: up" in wait_for_console(client, vm_id, "built-in shell")
    # The power button pressed on the host, not through the agent: the guest powers off.
    agent.run([*VIRSH, "shutdown", vm_id])
    report = wait_for_status(client, vm_id, "Down")
    assert (report["status"], report["exit_reason"]) == ("Down", "user shutdown")
    # It stays reported Down, with its reason, until removed.
    assert {vm["id"]: vm.get("exit_reason") for vm in client.list_vms()}[vm_id] == \
        "user shutdown"
    assert client.remove_vm(vm_id)["removed"] is True
    assert vm_id not in [vm["id"] for vm in client.list_vms()]


def test_pause_and_resume(agents, lab_guest, cleanup):
    agent = agents[0]
    client = agent.client()
    vm_id = start(agent, cleanup)
    assert client.pause_vm(vm_id)["status"] == "Paused"
    state = agent.run([*VIRSH, "domstate", vm_id], text=True).stdout.strip()
    assert state == "paused"
    assert client.vm_status(vm_id)["status"] == "Paused"
    assert client.resume_vm(vm_id)["status"] == "Up"
    assert agent.run([*VIRSH, "domstate", vm_id], text=True).stdout.strip() == "running"


def test_recovery_after_kill_9_finds_every_vm_in_its_true_state(agents, lab_guest, cleanup):
    agent = agents[0]
    client = agent.client()
    vms = [start(agent, cleanup) for _ in range(4)]
    client.pause_vm(vms[1])
    client.destroy_vm(vms[2])
    assert "kestrel-guest: up" in wait_for_console(client, vms[3], "built-in shell")
    agent.run([*VIRSH, "shutdown", vms[3]])
    assert wait_for_status(client, vms[3], "Down")["exit_reason"] == "user shutdown"
    before = {vm["id"]: vm for vm in client.list_vms() if vm["id"] in vms}
    qemu_ids = {vm_id: agent.run([*VIRSH, "domid", vm_id], text=True).stdout.strip()
                for vm_id in vms[:2]}

    old_pid = agent.pid
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    restart_agent(agent)
    assert agent.pid != old_pid

    after = {vm["id"]: vm for vm in agent.client().list_vms() if vm["id"] in vms}
    assert {vm_id: after[vm_id]["status"] for vm_id in vms} == {
        vms[0]: VmStatus.UP.value, vms[1]: VmStatus.PAUSED.value, vms[2]: VmStatus.DOWN.value,
        vms[3]: VmStatus.DOWN.value}
    # Why they stopped survives the restart too (libvirt alone says "shutdown" for the last).
    assert (after[vms[2]]["exit_reason"], after[vms[3]]["exit_reason"]) == \
        ("destroyed", "user shutdown")
    # Not restarted: the same QEMU processes (domain ids) as before the kill.
    for vm_id in vms[:2]:
        assert after[vm_id]["domain_id"] == before[vm_id]["domain_id"] is not None
        assert agent.run([*VIRSH, "domid", vm_id], text=True).stdout.strip() == \
            qemu_ids[vm_id]
    assert after[vms[0]]["cpu_time_ns"] >= before[vms[0]]["cpu_time_ns"]
