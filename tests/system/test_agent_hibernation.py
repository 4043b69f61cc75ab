"""Hibernation and reboot against real libvirtd and QEMU in lab hosts.

The guest keeps a marker in RAM (a file on its tmpfs, written through its
qemu-guest-agent): after a restore, on the same or another host, the marker
is still there and the guest never booted again.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from functools import partial

import pytest
from agent_fixtures import guest_domain_xml

from engine_lib.protocol import placeholders
from engine_lib.protocol.errors import Conflict, HookError, InvalidSpec
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

BOOT_TIMEOUT = 90.0
VIRSH = ["virsh", "-c", "qemu:///system"]
BOOTED = "kestrel-guest: up"


def guest_xml() -> tuple[str, dict, str]:
    """The lab guest with a guest-agent channel: (xml, disk volume, vm id)."""
    vm_id = str(uuid.uuid4())
    xml, volume = guest_domain_xml(vm_id)
    channel = (f"<channel type='unix'><source mode='bind' "
               f"path='{placeholders.channel(vm_id, 'org.qemu.guest_agent.0')}'/>"
               "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n    "
               "<memballoon")
    return xml.replace("<memballoon", channel, 1), volume, vm_id


def memory_volume() -> dict:
    return {"domain": "data", "image": str(uuid.uuid4()), "volume": str(uuid.uuid4())}


def memory_path(lab, volume: dict) -> str:
    return os.path.join(lab_hosts.shared_dir(lab[0].state_dir, "data"), volume["image"],
                        volume["volume"])


def qga(agent, vm_id: str, command: str, **arguments) -> object:
    """One qemu-guest-agent command, through libvirt in the VM's host."""
    request = json.dumps({"execute": command, "arguments": arguments})
    out = agent.run([*VIRSH, "qemu-agent-command", vm_id, request, "--timeout", "10"],
                    text=True).stdout
    return json.loads(out)["return"]


def wait_for_guest_agent(agent, vm_id: str) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        try:
            qga(agent, vm_id, "guest-ping")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def write_marker(agent, vm_id: str, text: str) -> None:
    handle = qga(agent, vm_id, "guest-file-open", path="/tmp/marker", mode="w")
    qga(agent, vm_id, "guest-file-write", handle=handle,
        **{"buf-b64": base64.b64encode(text.encode()).decode()})
    qga(agent, vm_id, "guest-file-close", handle=handle)


def read_marker(agent, vm_id: str) -> str:
    handle = qga(agent, vm_id, "guest-file-open", path="/tmp/marker", mode="r")
    data = qga(agent, vm_id, "guest-file-read", handle=handle)
    qga(agent, vm_id, "guest-file-close", handle=handle)
    return base64.b64decode(data["buf-b64"]).decode()


@pytest.fixture
def cleanup(agents):
    """(xml id, disk volume, memory volume) to clean from every host after the test."""
    started: list[tuple] = []
    yield started
    for vm_id, volume, memory in started:
        for agent in agents:
            client = agent.client()
            for step in (partial(client.destroy_vm, vm_id), partial(client.remove_vm, vm_id)):
                try:
                    step()
                except Exception:
                    pass
        try:
            agents[0].client().delete_volumes([volume, memory])
        except Exception:
            pass


def boot(agent, cleanup) -> tuple[str, str, dict]:
    xml, volume, vm_id = guest_xml()
    memory = memory_volume()
    cleanup.append((vm_id, volume, memory))
    assert agent.client().start_vm(xml)["started"] is True
    wait_for_guest_agent(agent, vm_id)
    return xml, vm_id, memory


def test_a_vm_hibernated_on_one_host_runs_on_from_its_memory_on_another(
        agents, lab, lab_guest, cleanup):
    source, destination = agents[0], agents[1]
    xml, vm_id, memory = boot(source, cleanup)
    write_marker(source, vm_id, "kept in RAM")

    saved = source.client().hibernate_vm(vm_id, memory)
    assert (saved["status"], saved["exit_reason"]) == ("Down", "saved")
    path = memory_path(lab, memory)
    assert saved["size_bytes"] == os.path.getsize(path) > 0
    assert source.client().vm_status(vm_id)["status"] == "Down"
    assert source.client().remove_vm(vm_id)["removed"] is True

    restored = destination.client().restore_vm(xml, memory)
    assert restored["started"] is True and restored["status"] == "Up"
    # The same guest runs on: its RAM is back and it did not boot again.
    assert read_marker(destination, vm_id) == "kept in RAM"
    assert not os.path.exists(path)  # deleted after a successful restore


def test_restore_without_its_memory_volume_is_refused_and_changes_nothing(agents, lab_guest):
    xml, _, vm_id = guest_xml()
    client = agents[0].client()
    with pytest.raises(InvalidSpec) as info:
        client._call("POST", "/vms", {"xml": xml, "mode": "restore"})
    assert info.value.field == "memory_volume"
    missing = memory_volume()
    with pytest.raises(Exception, match="memory volume"):
        client.restore_vm(xml, missing)
    assert vm_id not in [vm["id"] for vm in client.list_vms()]


def test_a_failing_before_vm_hibernate_hook_keeps_the_vm_running(agents, lab, lab_guest,
                                                                  cleanup):
    agent = agents[0]
    hook_dir = "/etc/kestrel/hooks/before_vm_hibernate"
    script = f"{hook_dir}/10_refuse"
    agent.run(["mkdir", "-p", hook_dir])
    agent.run(["chmod", "755", "/etc/kestrel/hooks", hook_dir])
    agent.run(["sh", "-c", 'cat > "$1" && chmod 755 "$1"', "install", script],
              input=b'#!/bin/sh\necho "no hibernation today" >&2\nexit 3\n')
    try:
        _, vm_id, memory = boot(agent, cleanup)
        with pytest.raises(HookError) as info:
            agent.client().hibernate_vm(vm_id, memory)
    finally:
        agent.run(["rm", "-f", script])
    assert "10_refuse" in info.value.message and "no hibernation today" in info.value.message
    assert agent.client().vm_status(vm_id)["status"] == "Up"
    assert not os.path.exists(memory_path(lab, memory))


def test_reboot_restarts_the_guest_in_the_same_qemu_process(agents, lab_guest, cleanup):
    agent = agents[0]
    _, vm_id, _ = boot(agent, cleanup)
    client = agent.client()
    domain_id = client.vm_status(vm_id)["domain_id"]
    assert client.reboot_vm(vm_id)["method"] == "acpi"
    deadline = time.monotonic() + BOOT_TIMEOUT
    while client.console_log(vm_id, 65536).count(BOOTED) < 2:
        assert time.monotonic() < deadline, "the guest did not boot again"
        time.sleep(0.5)
    status = client.vm_status(vm_id)
    assert (status["status"], status["domain_id"]) == ("Up", domain_id)
    with pytest.raises(Conflict, match="not running"):
        client.destroy_vm(vm_id)
        client.reboot_vm(vm_id)


def test_the_engine_suspends_a_vm_and_resumes_it_where_the_scheduler_says(
        engine, agents, lab, lab_guest):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    spec = {"name": "hib1", "cluster": "lab", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
            "cmdline": "console=ttyS0", "guest_agent": True,
            "disks": [{"name": "data", "size": "64MiB", "storage_domain": "data"}],
            "placement": {"hosts": [agents[0].name]}}
    try:
        vm = engine.vms.ensure(spec, state="running").entity
        agent = agents[0]
        wait_for_guest_agent(agent, vm["id"])
        write_marker(agent, vm["id"], "suspended, not stopped")

        suspended = engine.vms.ensure(spec, state="suspended")
        assert suspended.changed
        assert (suspended.entity["status"], suspended.entity["host"]) == ("Suspended", None)
        path = memory_path(lab, suspended.entity["memory_volume"])
        assert os.path.getsize(path) > 0
        assert vm["id"] not in [v["id"] for v in agent.client().list_vms()]
        assert engine.vms.ensure(spec, state="suspended").changed is False

        # Resumed on another host: only the placement changed.
        spec["placement"] = {"hosts": [agents[1].name]}
        resumed = engine.vms.ensure(spec, state="running")
        assert resumed.changed
        assert (resumed.entity["status"], resumed.entity["host"]) == ("Up", agents[1].name)
        assert resumed.entity["memory_volume"] is None and not os.path.exists(path)
        assert read_marker(agents[1], vm["id"]) == "suspended, not stopped"

        rebooted = engine.vms.ensure(spec, state="rebooted")
        assert rebooted.changed and rebooted.entity["status"] == "Up"
    finally:
        engine.vms.ensure({"name": "hib1"}, state="absent")
