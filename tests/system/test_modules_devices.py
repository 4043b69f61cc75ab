"""The disk and nic modules through ansible-playbook on a running guest on a lab host:
check mode, real run, check mode again; hotplug and live grow seen in the live domain."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_engine_on_lab import tiny_guest, wait_for_console

from kestrel_lab import hosts as lab_hosts


@pytest.fixture
def running_guest(engine, agents, lab):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    domain = engine.storage_domains.ensure(
        "data", path=lab_hosts.shared_dir(lab[0].state_dir, "data"), clusters=["lab"]).entity
    # Every lab host's agent reports the domain, with its free space.
    assert {h: a["available"] for h, a in domain["hosts"].items()} == \
        {a.name: True for a in agents}
    engine.networks.ensure("kestrelmgmt", cluster="lab")
    vm = engine.vms.ensure(tiny_guest("devices1"), state="running").entity
    wait_for_console(engine, "devices1", "kestrel-guest: up")
    yield vm, next(a for a in agents if a.name == vm["host"])
    engine.vms.ensure({"name": "devices1"}, state="absent")


def live_device(agent, vm_id: str, alias: str) -> ET.Element | None:
    root = ET.fromstring(agent.client().vm_xml(vm_id))
    return next((d for d in root.find("devices") if (d.find("alias") is not None
                 and d.find("alias").get("name") == alias)), None)


def three_beats(playbook, task: dict) -> tuple[dict, dict, dict]:
    return tuple(playbook.run([{**task, "check_mode": True}, {**task, "diff": True},
                               {**task, "check_mode": True}]))


def test_nic_is_hotplugged_with_a_pool_mac_in_three_beats(playbook, running_guest, engine):
    vm, agent = running_guest
    task = {"kestrel.virt.nic": {"vm": "devices1", "name": "nic2", "network": "kestrelmgmt",
                                 "model": "e1000"}}
    check, real, again = three_beats(playbook, task)
    assert check["changed"] and check["nic"]["hotplugged"] is True
    assert real["changed"] and real["nic"]["hotplugged"] is True, real
    assert not again["changed"] and again["nic"]["mac"] == real["nic"]["mac"]
    assert real["nic"]["mac"] in real["diff"]["after"] and real["nic"]["mac"] not in real["diff"]["before"]
    device = live_device(agent, vm["id"], real["nic"]["alias"])
    assert device is not None and device.tag == "interface"
    assert device.find("mac").get("address") == real["nic"]["mac"]
    assert device.find("model").get("type") == "e1000"

    # A setting the running domain cannot take is stored for the next start.
    (changed,) = playbook.run([{"kestrel.virt.nic": {"vm": "devices1", "name": "nic2",
                                                     "link_state": "down"}}])
    assert changed["changed"] and changed["nic"]["next_run"] is True
    assert live_device(agent, vm["id"], real["nic"]["alias"]).find("link") is None

    bad, = playbook.run([{"kestrel.virt.nic": {"vm": "devices1", "name": "nic3",
                                               "network": "nowhere"}}])
    assert bad["failed"] and bad["msg"].startswith("nics[") and "nowhere" in bad["msg"]
    assert [n["name"] for n in engine.vms.info("devices1")[0]["nics"]] == ["nic1", "nic2"]

    remove = {"kestrel.virt.nic": {"vm": "devices1", "name": "nic2", "state": "absent"}}
    check, real, again = three_beats(playbook, remove)
    assert check["changed"] and real["changed"] and not again["changed"], real
    assert real["nic"]["hotplugged"] is True
    assert live_device(agent, vm["id"], changed["nic"]["alias"]) is None


def test_disk_is_hotplugged_and_grown_live_in_three_beats(playbook, running_guest, lab):
    vm, agent = running_guest
    task = {"kestrel.virt.disk": {"vm": "devices1", "name": "extra", "size": "32MiB",
                                  "storage_domain": "data"}}
    check, real, again = three_beats(playbook, task)
    assert check["changed"] and real["changed"] and not again["changed"], real
    assert real["disk"]["hotplugged"] is True
    assert live_device(agent, vm["id"], real["disk"]["alias"]).tag == "disk"
    volume = Path(lab_hosts.shared_dir(lab[0].state_dir, "data"), real["disk"]["image_id"],
                  real["disk"]["volume_id"])

    def virtual_mib() -> int:
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(volume)],
                              capture_output=True, text=True, check=True).stdout
        return json.loads(info)["virtual-size"] // (1024 * 1024)

    assert virtual_mib() == 32
    grow = {"kestrel.virt.disk": {"vm": "devices1", "name": "extra", "size": "48MiB"}}
    check, real, again = three_beats(playbook, grow)
    assert check["changed"] and real["changed"] and not again["changed"], real
    assert real["disk"]["size_mib"] == 48 and virtual_mib() == 48
    grow_alias = real["disk"]["alias"]
    # QEMU itself knows the new size (blockResize on the running domain).
    stats = agent.client().vm_stats(vm["id"])
    assert virtual_mib() == 48 and stats

    shrink, = playbook.run([{"kestrel.virt.disk": {"vm": "devices1", "name": "extra",
                                                   "size": "16MiB"}}])
    assert shrink["failed"] and shrink["msg"].startswith("size:") and "shrinking" in shrink["msg"]
    assert virtual_mib() == 48

    # Detached: unplugged from the guest, the volume stays and can be attached again.
    detach = {"kestrel.virt.disk": {"vm": "devices1", "name": "extra", "state": "detached"}}
    check, real, again = three_beats(playbook, detach)
    assert check["changed"] and real["changed"] and not again["changed"], real
    assert real["disk"]["hotplugged"] is True and real["disk"]["volume_id"] == volume.name
    assert live_device(agent, vm["id"], grow_alias) is None and volume.exists()
    attach, = playbook.run([{"kestrel.virt.disk": {
        "vm": "devices1", "name": "again", "size": "48MiB", "storage_domain": "data",
        "volume": {"image_id": real["disk"]["image_id"], "volume_id": real["disk"]["volume_id"]}}}])
    assert attach["changed"] and attach["disk"]["hotplugged"] is True, attach
    assert live_device(agent, vm["id"], attach["disk"]["alias"]) is not None
    removed, = playbook.run([{"kestrel.virt.disk": {"vm": "devices1", "name": "again",
                                                    "state": "absent"}}])
    assert removed["changed"] and removed["disk"]["hotplugged"] is True, removed
    assert not volume.exists()


def test_vm_change_needing_a_restart_is_next_run_with_the_xml_diff(playbook, running_guest, engine):
    vm, agent = running_guest
    task = {"kestrel.virt.vm": {"name": "devices1", "memory": "192MiB", "tags": ["web"]}}
    check, real, again = three_beats(playbook, task)
    assert check["changed"] and real["changed"] and not again["changed"], real
    assert check["vm"]["next_run"] is True and real["vm"]["next_run"] is True
    assert "<memory unit='MiB'>128</memory>" in real["diff"]["before"]
    assert "<memory unit='MiB'>192</memory>" in real["diff"]["after"]
    assert real["vm"]["status"] == "Up" and real["vm"]["tags"] == ["web"]
    # The running domain still has its old memory until the next start.
    live = ET.fromstring(agent.client().vm_xml(vm["id"]))
    assert int(live.findtext("memory")) == 128 * 1024
