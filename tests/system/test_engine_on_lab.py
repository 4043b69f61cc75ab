"""The engine driving real agents on lab hosts: a real guest boots under QEMU."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from engine_lib import pki
from engine_lib.engine import Engine
from engine_lib.protocol.errors import CertificateError, NoValidHost, VmNotFound
from kestrel_lab import hosts as lab_hosts


def tiny_guest(name: str) -> dict:
    return {"name": name, "cluster": "lab", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
            "disks": [{"name": "data", "size": "64MiB", "storage_domain": "data"}],
            "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


@pytest.fixture
def cluster(engine, agents):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    return "lab"


def wait_for_console(engine, name: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    console = ""
    while time.monotonic() < deadline:
        console = engine.vms.console(name)
        if text in console:
            return console
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not on the console of {name} after {timeout}s:\n{console}")


def test_hosts_register_with_their_real_capabilities(engine, cluster, agents):
    hosts = engine.hosts.info(cluster=cluster)
    assert [h["name"] for h in hosts] == [a.name for a in agents]
    assert all(h["status"] == "Up" and h["cpus"] > 0 and h["memory_mib"] > 0 for h in hosts)
    assert len({h["host_uuid"] for h in hosts}) == len(hosts)  # each lab host its own libvirtd
    # What the scheduler filters on, as each agent reports it.
    assert all("kestrelmgmt" in h["networks"] for h in hosts)
    assert all({"pc", "q35"} <= set(h["machines"]) for h in hosts)


def test_a_vm_on_a_network_no_host_has_gets_no_valid_host(engine, cluster):
    spec = {**tiny_guest("lost"), "nics": [{"name": "nic1", "network": "backend"}]}
    with pytest.raises(NoValidHost) as info:
        engine.vms.ensure(spec, state="running")
    assert "backend" in info.value.message
    assert engine.vms.info("lost")[0]["status"] == "Down"
    engine.vms.ensure({"name": "lost"}, state="absent")


def test_a_real_guest_boots_stops_and_is_removed(engine, cluster, agents, lab):
    spec = tiny_guest("guest1")
    started = engine.vms.ensure(spec, state="running")
    vm = started.entity
    assert started.changed and vm["status"] == "Up" and vm["host"] in {a.name for a in agents}
    agent = next(a for a in agents if a.name == vm["host"])

    # The guest really runs: the kernel booted and saw our disk and NIC.
    console = wait_for_console(engine, "guest1", "kestrel-guest: up")
    wait_for_console(engine, "guest1", "kestrel-guest: nics")
    console = engine.vms.console("guest1")
    assert "kestrel-guest: disks vda" in console
    assert "eth0" in console

    # The agent created the disk volume as thin qcow2 on the shared storage domain.
    disk = vm["disks"][0]
    volume = Path(lab_hosts.shared_dir(lab[0].state_dir, "data"), disk["image_id"],
                  disk["volume_id"])
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(volume)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 64 * 1024 * 1024

    # Devices read back from the live XML by their ua- alias: libvirt's addresses stored.
    devices = {d["name"] or d["type"]: d for d in vm["devices"]}
    assert devices["data"]["address"]["target"] == "vda"
    assert devices["data"]["address"]["type"] == "pci"
    assert devices["nic1"]["address"]["type"] == "pci"

    assert engine.vms.ensure(spec, state="running").changed is False

    stopped = engine.vms.ensure(spec, state="stopped", force=True)
    assert stopped.changed and stopped.entity["status"] == "Down"
    with pytest.raises(VmNotFound):
        agent.client().vm_status(vm["id"])
    assert volume.exists()  # stopping keeps the disk

    assert engine.vms.ensure({"name": "guest1"}, state="absent").changed
    assert not volume.exists()
    assert engine.vms.info() == []


def test_an_agent_whose_certificate_another_ca_signed_is_refused(agents, tmp_path):
    pki.init_ca(str(tmp_path / "other" / "pki"), common_name="some other CA")
    with Engine.open(engine_dir=str(tmp_path / "other")) as other:
        other.clusters.ensure("c")
        with pytest.raises(CertificateError) as info:
            other.hosts.ensure("h1", address=agents[0].address, cluster="c")
        assert "certificate" in info.value.message
        assert other.hosts.info() == []


def test_the_engine_loop_never_guesses_a_vm_down_when_its_agent_dies(engine, cluster, agents):
    from agent_fixtures import start_agent, stop_agent

    from engine_lib.loop.monitoring import Intervals, Monitor

    vm = engine.vms.ensure(tiny_guest("guest2"), state="running").entity
    agent = next(a for a in agents if a.name == vm["host"])
    monitor = Monitor(engine, Intervals(non_responsive_after_s=1.5))

    def seen():
        host = engine.hosts.info(name=agent.name)[0]["status"]
        return host, engine.vms.info("guest2")[0]["status"]

    monitor.cycle()
    assert seen() == ("Up", "Up")
    try:
        stop_agent(agent.pid)
        monitor.cycle()
        assert seen() == ("Connecting", "Up")
        time.sleep(1.6)
        monitor.cycle()
        assert seen() == ("NonResponsive", "Unknown")
        # The guest never stopped: libvirt on the host still runs it.
        running = agent.run(["virsh", "-c", "qemu:///system", "list", "--uuid"], text=True)
        assert vm["id"] in running.stdout
    finally:
        agent.pid = start_agent(agent.host, agent.pki_dir).pid
    monitor.cycle()
    assert seen() == ("Up", "Up")
    engine.vms.ensure({"name": "guest2"}, state="absent")
