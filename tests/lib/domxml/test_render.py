"""The engine's domain XML: valid for libvirt, aliased, stable, injection-proof."""

import xml.etree.ElementTree as ET

import libvirt
import pytest

from engine_lib.protocol import metadata

FULL = {"name": "web1", "cluster": "c1", "memory": "256MiB", "cpu": {"sockets": 2, "cores": 2},
        "description": "front end", "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
        "cmdline": "console=ttyS0",
        "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data", "bootable": True},
                  {"name": "logs", "size": 64, "storage_domain": "data", "interface": "scsi",
                   "format": "raw"},
                  {"name": "extra", "size": 64, "storage_domain": "data", "interface": "sata"}],
        "nics": [{"name": "nic1", "network": "kestrelmgmt"},
                 {"name": "nic2", "network": "backend", "model": "e1000"}],
        "custom_properties": {"sap_agent": "true"}}


@pytest.fixture
def cluster(cluster, engine):
    """The cluster, allowing the custom properties these VMs set (any value)."""
    engine.clusters.ensure(cluster, custom_properties={"sap_agent": "true", "note": ".*"})
    return cluster


@pytest.fixture(scope="module")
def test_driver():
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def render(engine, spec):
    return engine.vms.ensure(spec, state="present").diff["after"]


def test_rendered_xml_validates_against_libvirts_schema(engine, cluster, test_driver):
    xml = render(engine, FULL)
    dom = test_driver.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    dom.undefine()


def test_every_device_carries_a_user_alias(engine, cluster):
    root = ET.fromstring(render(engine, FULL))
    devices = list(root.find("devices"))
    assert len(devices) == 9  # 3 disks, scsi controller, 2 NICs, serial, console, balloon
    for device in devices:
        assert device.find("alias").get("name").startswith("ua-"), ET.tostring(device)


def test_rendering_twice_gives_identical_xml_and_keeps_macs(engine, cluster):
    first = render(engine, FULL)
    assert engine.vms.ensure(FULL, state="present").changed is False
    assert engine.vms.domain_xml("web1") == first
    macs = [m.get("address") for m in ET.fromstring(first).iter("mac")]
    assert len(set(macs)) == 2 and all(m.startswith("56:6f:4b:") for m in macs)


def test_metadata_tells_the_agent_how_to_prepare_volumes(engine, cluster):
    root = ET.fromstring(render(engine, FULL))
    meta = metadata.read(root)
    assert meta.cluster == "c1"
    assert [(v.domain, v.format, v.size_mib) for v in meta.volumes] == [
        ("data", "qcow2", 1024), ("data", "raw", 64), ("data", "qcow2", 64)]
    sources = [d.find("source").get("file") for d in root.iter("disk")]
    assert sources == [f"/kestrel-placeholder/storage/data/{v.relpath}" for v in meta.volumes]
    assert meta.custom_properties == {"sap_agent": "true"}


def test_disk_targets_and_boot_order(engine, cluster):
    spec = {**FULL, "kernel": "", "initrd": ""}
    root = ET.fromstring(render(engine, spec))
    targets = [
        (d.find("target").get("dev"), d.find("target").get("bus")) for d in root.iter("disk")
    ]
    assert targets == [("vda", "virtio"), ("sda", "scsi"), ("sdb", "sata")]
    boots = [
        d.find("boot").get("order") if d.find("boot") is not None else None
        for d in root.iter("disk")
    ]
    assert boots == ["1", None, None]


@pytest.mark.parametrize("evil", ["<script>", "a & b", 'it\'s "quoted"', "]]>", "ünïcødé ✓"])
def test_user_strings_cannot_break_the_xml(engine, cluster, evil, test_driver):
    spec = {
        "name": "evil",
        "cluster": "c1",
        "memory": 128,
        "description": evil,
        "custom_properties": {"note": evil},
        "cmdline": evil,
    }
    xml = render(engine, spec)
    root = ET.fromstring(xml)
    assert root.findtext("description") == evil
    assert root.find("os").findtext("cmdline") is None  # no kernel: cmdline is not emitted
    assert metadata.read(root).custom_properties == {"note": evil}
    test_driver.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE).undefine()
