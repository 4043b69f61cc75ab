"""Device matching on live XML from a real libvirtd: NICs plugged and unplugged behind
the engine's back (virsh inside the lab host) are picked up and marked by the engine loop."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from engine_lib.loop.monitoring import Monitor
from engine_lib.model import Vm, VmDevice

pytestmark = pytest.mark.lab

VIRSH = ["virsh", "-c", "qemu:///system"]
FOREIGN_MAC = "52:54:00:5e:00:42"
FOREIGN_NIC = f"""<interface type='bridge'>
  <mac address='{FOREIGN_MAC}'/>
  <source bridge='kestrelmgmt'/>
  <model type='virtio'/>
</interface>
"""
# KESTREL_REGENERATE_LIVE=1 stores the live XML and device rows this test sees as golden
# files for tests/lib/devices/test_match.py (real libvirtd output, not hand-written).
GOLDEN = Path(__file__).parent.parent / "lib" / "golden" / "live"


def tiny_guest(name: str) -> dict:
    return {"name": name, "cluster": "lab", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
            "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


@pytest.fixture
def running_vm(engine, agents, lab_guest):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    vm = engine.vms.ensure(tiny_guest("matched"), state="running").entity
    try:
        agent = next(a for a in agents if a.name == vm["host"])
        wait_for(lambda: "kestrel-guest: up" in engine.vms.console("matched"), 90,
                 "the guest to boot")
        yield agent, vm
    finally:
        engine.vms.ensure({"name": "matched"}, state="absent")


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def reported_hash(agent, vm_id: str) -> str:
    return next(vm for vm in agent.client().list_vms() if vm["id"] == vm_id)["devices_hash"]


def cycle_after_change(monitor, agent, vm_id: str, before: str) -> str:
    """Run a cycle once the agent reports the devices changed (libvirt events are async)."""
    after = wait_for(lambda: (h := reported_hash(agent, vm_id)) != before and h, 30,
                     "the agent's devices hash to change")
    monitor.cycle()
    return after


def devices(engine) -> list[dict]:
    return engine.vms.info("matched")[0]["devices"]


def save_golden(engine, name: str, vm_name: str, live_xml: str) -> None:
    """The live XML and the VM's device rows as the engine stored them after matching it."""
    if not os.environ.get("KESTREL_REGENERATE_LIVE"):
        return
    with engine.store.transaction(commit=False) as session:
        vm = session.execute(select(Vm).where(Vm.name == vm_name)).scalar_one()
        rows = [{key: getattr(d, key) for key in ("id", "type", "name", "managed", "plugged",
                                                  "alias", "address", "guest_name", "spec")}
                for d in vm.devices]
    GOLDEN.mkdir(parents=True, exist_ok=True)
    (GOLDEN / f"{name}.xml").write_text(live_xml)
    (GOLDEN / f"{name}.devices.json").write_text(json.dumps(rows, indent=2) + "\n")


def test_a_nic_hotplugged_through_libvirt_is_picked_up_and_its_unplug_marked(
        engine, running_vm, tmp_path):
    agent, vm = running_vm
    vm_id = vm["id"]
    monitor = Monitor(engine)
    client = agent.client()

    # First poll: the hash was never matched, so the engine reads the live XML.
    monitor.cycle()
    first = devices(engine)
    save_golden(engine, "started", "matched", client.vm_xml(vm_id))
    ours = {d["name"] or d["type"]: d for d in first if d["managed"]}
    theirs = [d for d in first if not d["managed"]]
    assert ours["nic1"]["address"]["type"] == "pci" and ours["nic1"]["plugged"]
    assert ours["serial"]["plugged"]  # its console shares the alias: no stray row
    # What libvirt added on its own, under libvirt's aliases, with the addresses it chose.
    assert {(d["type"], d["alias"]) for d in theirs} >= {
        ("controller", "usb"), ("controller", "pci.0"), ("input", "input0")}
    usb = next(d for d in theirs if d["alias"] == "usb")
    assert usb["address"]["type"] == "pci"
    hash_matched = reported_hash(agent, vm_id)
    assert engine.vms.info("matched")[0]["status"] == "Up"

    # A steady VM: the next cycles leave its devices exactly as they are.
    monitor.cycle()
    assert devices(engine) == first

    # Plugged behind the engine's back, with libvirt's own tools inside the host.
    nic_file = tmp_path / "foreign-nic.xml"
    nic_file.write_text(FOREIGN_NIC)
    agent.run(VIRSH + ["attach-device", vm_id, str(nic_file), "--live"])
    hash_plugged = cycle_after_change(monitor, agent, vm_id, hash_matched)
    foreign = [d for d in devices(engine) if d["type"] == "interface" and not d["managed"]]
    assert len(foreign) == 1
    live_nic = foreign[0]
    assert live_nic["address"]["type"] == "pci" and live_nic["address"]["slot"].startswith("0x")
    assert live_nic["alias"].startswith("net")  # libvirt's alias: it carries no ua- of ours
    with engine.store.transaction(commit=False) as session:
        assert session.get(VmDevice, live_nic["id"]).spec["mac"] == FOREIGN_MAC
    messages = [e["message"] for e in engine.events.info(entity_name="matched")]
    assert any(m.startswith(f"picked up unmanaged interface {FOREIGN_MAC} at pci ") and
               "hotplugged outside the engine" in m for m in messages)
    save_golden(engine, "hotplugged", "matched", client.vm_xml(vm_id))
    # The engine's next domain XML leaves the foreign NIC to whoever plugged it.
    assert FOREIGN_MAC not in engine.vms.domain_xml("matched")

    # Unplugged again behind its back: the unmanaged row goes.
    agent.run(VIRSH + ["detach-device", vm_id, str(nic_file), "--live"])
    wait_for(lambda: FOREIGN_MAC not in client.vm_xml(vm_id), 30, "the guest to release the NIC")
    hash_unplugged = cycle_after_change(monitor, agent, vm_id, hash_plugged)
    assert not [d for d in devices(engine) if d["type"] == "interface" and not d["managed"]]
    messages = [e["message"] for e in engine.events.info(entity_name="matched")]
    assert f"unmanaged interface {FOREIGN_MAC} is gone: not in the live XML: an unmanaged " \
           "device is gone" in messages

    # Our own NIC unplugged behind the engine's back: kept, marked unplugged, not rendered.
    nic1 = ours["nic1"]
    agent.run(VIRSH + ["detach-device-alias", vm_id, nic1["alias"], "--live"])
    wait_for(lambda: nic1["alias"] not in client.vm_xml(vm_id), 30, "the guest to release nic1")
    cycle_after_change(monitor, agent, vm_id, hash_unplugged)
    after = {d["id"]: d for d in devices(engine)}
    assert after[nic1["id"]]["plugged"] is False
    assert nic1["alias"] not in engine.vms.domain_xml("matched")
    messages = [e["message"] for e in engine.events.info(entity_name="matched")]
    assert any(m.startswith("interface 'nic1'") and "marked unplugged" in m for m in messages)


def rich_guest(name: str) -> dict:
    """About twenty devices on q35 (its PCIe root ports are libvirt's): the benchmark's model."""
    return {"name": name, "cluster": "lab", "memory": "128MiB", "machine": "q35",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
            "disks": [{"name": "root", "size": "16MiB", "storage_domain": "data"},
                      {"name": "data", "size": "16MiB", "storage_domain": "data",
                       "interface": "scsi"},
                      {"name": "logs", "size": "16MiB", "storage_domain": "data"}],
            "cdrom": "images:initrd.img",
            "nics": [{"name": f"nic{i}", "network": "kestrelmgmt"} for i in range(1, 4)],
            "graphics": {"type": "vnc"}, "video": "virtio", "guest_agent": True, "rng": True,
            "watchdog": {"action": "reset"}}


def test_every_device_of_a_rich_vm_is_matched_on_the_first_poll(engine, agents, lab_guest):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    try:
        vm = engine.vms.ensure(rich_guest("rich"), state="running").entity
        agent = next(a for a in agents if a.name == vm["host"])
        Monitor(engine).cycle()
        _assert_statistics_recorded(engine, vm["id"], agent.name, len(agents))
        rows = engine.vms.info("rich")[0]["devices"]
        save_golden(engine, "rich", "rich", agent.client().vm_xml(vm["id"]))
        ours = [d for d in rows if d["managed"]]
        # Every device of ours is plugged at the address libvirt gave it; graphics (no
        # alias in libvirt) matched as the VM's only graphics.
        assert {d["type"] for d in ours} >= {"disk", "cdrom", "interface", "graphics", "video",
                                             "channel", "rng", "watchdog", "memballoon",
                                             "serial", "controller"}
        assert all(d["plugged"] for d in ours)
        assert all(d["address"] for d in ours if d["type"] not in ("graphics", "serial"))
        disks = {d["name"]: d["guest_name"] for d in ours if d["type"] == "disk"}
        assert disks == {"root": "vda", "data": "sda", "logs": "vdb"}
        theirs = [d for d in rows if not d["managed"]]
        assert sum(d["alias"].startswith("pci.") for d in theirs) >= 5  # q35's root ports
        assert not [e for e in engine.events.info(entity_name="rich")
                    if "unplugged" in e["message"] or "picked up" in e["message"]]
    finally:
        engine.vms.ensure({"name": "rich"}, state="absent")


def _assert_statistics_recorded(engine, vm_id: str, host: str, hosts: int) -> None:
    """The same VM poll (the agent's GET /stats) gave the engine the real figures."""
    from sqlalchemy import select

    from engine_lib.model import Host, HostStatistics, VmStatistics

    with engine.store.transaction(commit=False) as session:
        host_rows = session.scalars(select(HostStatistics)).all()
        assert len(host_rows) == hosts
        assert all(row.memory_used_mib > 0 and row.load_1m is not None for row in host_rows)
        vm_row = session.get(VmStatistics, vm_id)
        assert vm_row is not None and vm_row.host_id == session.scalars(
            select(Host.id).where(Host.name == host)).one()
        assert vm_row.memory_used_mib and vm_row.balloon_current_mib == 128
