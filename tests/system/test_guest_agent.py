"""Guest-agent reporting with a real qemu-guest-agent inside the lab guest."""

from __future__ import annotations

import time

import pytest

from engine_lib.loop.monitoring import Monitor
from engine_lib.protocol.errors import GuestAgentUnavailable

pytestmark = pytest.mark.lab

# A documentation address (RFC 5737): configured in the guest, never routed anywhere.
GUEST_IP = "192.0.2.10"


def guest_spec(name: str, guest_agent: bool) -> dict:
    return {"name": name, "cluster": "lab", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
            "cmdline": f"console=ttyS0 kestrel.ip={GUEST_IP}/24 kestrel.fs=vda",
            "guest_agent": guest_agent,
            "disks": [{"name": "data", "size": "64MiB", "storage_domain": "data"}],
            "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


@pytest.fixture
def cluster(engine, agents, lab_guest):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    return "lab"


@pytest.fixture
def vms(engine, cluster):
    names: list[str] = []
    yield names
    for name in names:
        engine.vms.ensure({"name": name}, state="absent")


def start(engine, vms, agents, name: str, guest_agent: bool):
    vms.append(name)
    vm = engine.vms.ensure(guest_spec(name, guest_agent), state="running").entity
    return vm, next(a for a in agents if a.name == vm["host"]).client()


def wait_for_guest_agent(client, vm_id: str, timeout: float = 90) -> dict:
    """The report once the guest agent answers and the guest has set up eth0 and vda."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            report = client.guest_info(vm_id)
            if report["ips"] and report["filesystems"]:
                return report
        except GuestAgentUnavailable:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no full guest-agent report within {timeout}s:\n"
                                 f"{client.console_log(vm_id, 8192)}")
        time.sleep(1)


def test_the_agent_and_the_engine_report_what_the_guest_agent_says(engine, vms, agents):
    vm, client = start(engine, vms, agents, "ga1", guest_agent=True)
    report = wait_for_guest_agent(client, vm["id"])

    assert report["hostname"] == "kestrel-guest"
    assert (report["os"]["id"], report["os"]["name"]) == ("kestrel-guest", "kestrel test guest")
    assert report["os"]["kernel_release"].endswith("-amd64")
    mac = vm["nics"][0]["mac"]
    eth0 = next(nic for nic in report["interfaces"] if nic["mac"] == mac)
    assert f"{GUEST_IP}/24" in eth0["ips"]
    assert report["ips"] == [GUEST_IP]  # loopback and link-local left out
    data = next(fs for fs in report["filesystems"] if fs["mountpoint"] == "/mnt/data")
    assert data["type"] == "ext2" and data["total_bytes"] > 50 * 1024 * 1024
    assert report["users"] == []  # nobody logged in to the test guest

    # The engine's VM poll stores it; vm["guest"] is what the inventory reads.
    assert engine.vms.info("ga1")[0]["guest"]["ips"] == []
    Monitor(engine).cycle()
    guest = engine.vms.info("ga1")[0]["guest"]
    assert guest["ips"] == [GUEST_IP]
    assert (guest["hostname"], guest["os"]["id"]) == ("kestrel-guest", "kestrel-guest")
    assert "/mnt/data" in [fs["mountpoint"] for fs in guest["filesystems"]]


def test_a_vm_without_a_guest_agent_channel_says_so(engine, vms, agents):
    vm, client = start(engine, vms, agents, "ga2", guest_agent=False)
    started = time.monotonic()
    with pytest.raises(GuestAgentUnavailable) as info:
        client.guest_info(vm["id"])
    assert "not responding" in info.value.message
    assert time.monotonic() - started < 6  # bounded by the agent's guest-agent timeout
