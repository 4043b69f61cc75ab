"""One disk or NIC at a time: stable MACs and ids, hotplug on a running VM, grow-only disks."""

import xml.etree.ElementTree as ET

import pytest
from conftest import FakeAgent

from engine_lib.protocol.errors import Conflict, InvalidSpec

VM = {"name": "vm1", "cluster": "c1", "memory": "256MiB",
      "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"}],
      "nics": [{"name": "nic1", "network": "br0"}]}


class DeviceAgent(FakeAgent):
    """A FakeAgent that records hotplug and volume requests."""

    def __init__(self, name):
        super().__init__(name)
        self.plugged, self.unplugged, self.resized = [], [], []
        self.plugged_luns: list = []
        self.plugged_chains: list = []
        self.refuse_plug = False

    def plug_device(self, vm_id, xml, volume=None, luns=None, chain=None):
        if self.refuse_plug:
            raise Conflict("the guest refused the device")
        self.plugged.append((vm_id, ET.fromstring(xml), volume))
        self.plugged_luns.append(luns)
        self.plugged_chains.append(chain)
        return {"id": vm_id}

    def unplug_device(self, vm_id, alias, timeout=20):
        self.unplugged.append((vm_id, alias))
        return {"removed": True}

    def resize_volume(self, volume):
        self.resized.append(volume)
        return {"resized": True}


@pytest.fixture
def host(engine, cluster, agents):
    agent = agents["10.0.0.1"] = DeviceAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure(VM)
    return agent


def test_nic_added_to_a_stopped_vm_keeps_its_mac_and_is_idempotent(engine, host):
    predicted = engine.vm_devices.nic("vm1", "nic2", settings={"network": "br0"}, check_mode=True)
    assert predicted.changed and "nic2" not in [n["name"] for n in engine.vms.info("vm1")[0]["nics"]]
    added = engine.vm_devices.nic("vm1", "nic2", settings={"network": "br0"})
    assert added.changed and added.entity["mac"] == predicted.entity["mac"]
    assert added.entity["hotplugged"] is False and host.plugged == []
    assert added.entity["mac"] in added.diff["after"] and added.entity["mac"] not in added.diff["before"]
    again = engine.vm_devices.nic("vm1", "nic2", settings={"network": "br0"})
    assert again.changed is False and again.entity["mac"] == added.entity["mac"]
    # The VM module's full list still manages the same devices (no duplicate, same MAC).
    updated = engine.vm_devices.nic("vm1", "nic2", settings={"link_state": "down"})
    assert updated.changed and updated.entity["mac"] == added.entity["mac"]
    assert updated.entity["id"] == added.entity["id"]


def test_nic_on_a_running_vm_is_hotplugged_and_unplugged(engine, host):
    engine.vms.ensure(VM, state="running")
    vm_id = engine.vms.info("vm1")[0]["id"]
    added = engine.vm_devices.nic("vm1", "nic2", settings={"network": "br0", "model": "e1000"})
    assert added.entity["hotplugged"] is True and added.entity["next_run"] is False
    [(plugged_vm, element, volume)] = host.plugged
    assert plugged_vm == vm_id and volume is None
    assert element.tag == "interface" and element.find("alias").get("name") == added.entity["alias"]
    assert element.find("mac").get("address") == added.entity["mac"]
    # A setting of a plugged NIC waits for the next start.
    changed = engine.vm_devices.nic("vm1", "nic2", settings={"link_state": "down"})
    assert changed.entity["next_run"] is True and changed.entity["hotplugged"] is False
    removed = engine.vm_devices.nic("vm1", "nic2", state="absent")
    assert removed.changed and removed.entity["hotplugged"] is True
    assert host.unplugged == [(vm_id, added.entity["alias"])]
    assert engine.vm_devices.nic("vm1", "nic2", state="absent").changed is False


def test_a_refused_hotplug_leaves_the_vm_as_it_was(engine, host):
    engine.vms.ensure(VM, state="running")
    before = engine.vms.domain_xml("vm1")
    host.refuse_plug = True
    with pytest.raises(Conflict, match="refused"):
        engine.vm_devices.nic("vm1", "nic2", settings={"network": "br0"})
    assert engine.vms.domain_xml("vm1") == before


def test_disk_create_grow_detach_attach_and_remove(engine, host):
    created = engine.vm_devices.disk("vm1", "data", settings={"size": "2GiB",
                                                              "storage_domain": "data"})
    assert created.changed and created.entity["size_mib"] == 2048
    assert engine.vm_devices.disk("vm1", "data", settings={"size": "2GiB"}).changed is False
    with pytest.raises(InvalidSpec, match="shrinking") as err:
        engine.vm_devices.disk("vm1", "data", settings={"size": "1GiB"})
    assert err.value.details["field"] == "size"
    grown = engine.vm_devices.disk("vm1", "data", settings={"size": "3GiB"})
    assert grown.entity["size_mib"] == 3072 and host.resized[-1]["size_mib"] == 3072
    assert host.resized[-1]["volume"] == created.entity["volume_id"]
    detached = engine.vm_devices.disk("vm1", "data", state="detached")
    assert detached.entity["volume_id"] == created.entity["volume_id"]
    assert "data" not in [d["name"] for d in engine.vms.info("vm1")[0]["disks"]]
    assert host.deleted_volumes == []
    attached = engine.vm_devices.disk("vm1", "again", settings={"size": "3GiB",
                                                                "storage_domain": "data"},
                                      volume={"image_id": detached.entity["image_id"],
                                              "volume_id": detached.entity["volume_id"]})
    assert attached.entity["volume_id"] == created.entity["volume_id"]
    assert created.entity["volume_id"] in engine.vms.domain_xml("vm1")
    removed = engine.vm_devices.disk("vm1", "again", state="absent")
    assert removed.changed and host.deleted_volumes[-1]["volume"] == created.entity["volume_id"]


def test_disk_hotplug_sends_the_volume_to_create(engine, host):
    engine.vms.ensure(VM, state="running")
    added = engine.vm_devices.disk("vm1", "data", settings={"size": "1GiB",
                                                            "storage_domain": "data"})
    assert added.entity["hotplugged"] is True
    [(_, element, volume)] = host.plugged
    assert element.tag == "disk" and volume["volume"] == added.entity["volume_id"]
    assert volume["size_mib"] == 1024


def test_disk_check_mode_changes_nothing(engine, host):
    before = engine.vms.domain_xml("vm1")
    outcome = engine.vm_devices.disk("vm1", "data", settings={"size": "1GiB",
                                                              "storage_domain": "data"},
                                     check_mode=True)
    assert outcome.changed and outcome.diff["before"] == before != outcome.diff["after"]
    assert engine.vms.domain_xml("vm1") == before
    outcome = engine.vm_devices.disk("vm1", "root", settings={"size": "5GiB"}, check_mode=True)
    assert outcome.changed and host.resized == []
    assert engine.vms.info("vm1")[0]["disks"][0]["size_mib"] == 1024


def test_new_disk_needs_a_size_and_a_domain(engine, host):
    with pytest.raises(InvalidSpec) as err:
        engine.vm_devices.disk("vm1", "data", settings={"storage_domain": "data"})
    assert err.value.details["field"] == "disk.size"
    with pytest.raises(InvalidSpec) as err:
        engine.vm_devices.nic("vm1", "nic9", settings={"model": "virtio"})
    assert err.value.details["field"] == "network"
