"""LUNs an administrator registered are the only block devices a VM disk can name."""

import xml.etree.ElementTree as ET

import pytest
from test_vm_devices import DeviceAgent

from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import Conflict, InvalidSpec

DEVICE = "/dev/disk/by-id/wwn-0x600a098038303053"
VM = {"name": "vm1", "cluster": "c1", "memory": "256MiB",
      "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"}]}


def test_a_lun_disk_must_name_a_registered_lun(engine, cluster):
    lun_vm = {**VM, "disks": [{"name": "db", "lun": "db", "interface": "scsi"}]}
    with pytest.raises(InvalidSpec, match=r"disks\[0\]\.lun: 'db' is not a registered LUN"):
        engine.vms.ensure(lun_vm)
    with pytest.raises(InvalidSpec, match=r"disks\[0\]\.lun: must name a LUN"):
        engine.vms.ensure({**VM, "disks": [{"name": "db", "lun": "/dev/mem"}]})
    assert engine.vms.info() == []


def test_a_registered_lun_renders_as_a_placeholder_with_its_path_in_the_metadata(engine, cluster):
    registered = engine.luns.register("db", DEVICE, wwid="3600a098038303053")
    assert registered.changed and engine.luns.register("db", DEVICE, wwid="3600a098038303053") \
        .changed is False
    # Named by its WWID, kept by its name.
    engine.vms.ensure({**VM, "disks": [*VM["disks"], {"name": "db", "lun": "3600a098038303053",
                                                      "interface": "scsi"}]})
    root = ET.fromstring(engine.vms.domain_xml("vm1"))
    sources = [d.find("source").get("dev") for d in root.iterfind("devices/disk[@type='block']")]
    assert sources == [placeholders.lun("db")]
    assert metadata.read(root).luns == {"db": DEVICE}
    with pytest.raises(Conflict, match="LUN 'db' is a disk of VM\\(s\\) vm1"):
        engine.luns.remove("db")
    with pytest.raises(Conflict, match="registered with path"):
        engine.luns.register("db", "/dev/sdb")


def test_registering_takes_only_device_paths(engine):
    for path in ("/etc/shadow", "/dev/../etc/shadow", "sda", "/kestrel-placeholder/lun/x"):
        with pytest.raises(InvalidSpec, match="path"):
            engine.luns.register("bad", path)
    engine.luns.register("a", "/dev/sdx", wwid="w1")
    with pytest.raises(Conflict, match="WWID w1 is already registered as LUN 'a'"):
        engine.luns.register("b", "/dev/sdy", wwid="w1")
    assert [lun["name"] for lun in engine.luns.info()] == ["a"]
    assert engine.luns.remove("a").changed and engine.luns.info() == []


def test_a_hotplugged_lun_carries_its_registration_to_the_agent(engine, cluster, agents):
    agent = agents["10.0.0.1"] = DeviceAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.luns.register("db", DEVICE)
    engine.vms.ensure(VM, state="running")
    out = engine.vm_devices.disk("vm1", "db", settings={"lun": "db", "interface": "scsi"})
    assert out.entity["hotplugged"] is True
    _, device, _ = agent.plugged[-1]
    assert device.find("source").get("dev") == placeholders.lun("db")
    assert agent.plugged_luns[-1] == {"db": DEVICE}
    # Settings of the LUN disk change without naming its path again.
    assert engine.vm_devices.disk("vm1", "db", settings={"readonly": True}).changed
