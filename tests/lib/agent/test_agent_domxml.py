"""Placeholder resolution in the engine's domain XML, as the agent does it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from engine_lib.agent import domxml
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import InvalidSpec

VM_ID = "6f1d2c9e-8a4b-4c1e-9f7a-0123456789ab"
ROOTS = {"channels": "/var/lib/kestrel/channels", "payload": "/var/lib/kestrel/payload",
         "console": "/var/log/kestrel/console", "nvram": "/var/lib/kestrel/nvram"}
DOMAINS = {"data": "/srv/data", "images": "/srv/images"}


def engine_xml(disk_domain: str = "data") -> str:
    disk = placeholders.storage(disk_domain, "img-1/vol-1")
    return f"""<domain type='qemu'>
  <name>vm1</name>
  <uuid>{VM_ID}</uuid>
  <metadata>
    <kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>
      <kestrel:volume alias='ua-d1' domain='{disk_domain}' image='img-1' volume='vol-1'
                      format='qcow2' size_mib='64'/>
    </kestrel:vm>
  </metadata>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{placeholders.storage('images', 'vmlinuz')}</kernel>
    <initrd> {placeholders.storage('images', 'initrd.img')} </initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'><log file='{placeholders.console_log(VM_ID)}' append='on'/></serial>
    <channel type='unix'>
      <source mode='bind' path='{placeholders.channel(VM_ID, "org.qemu.guest_agent.0")}'/>
    </channel>
  </devices>
</domain>"""


def test_every_placeholder_becomes_a_host_path():
    host = domxml.resolve(engine_xml(), ROOTS, DOMAINS)
    assert (host.uuid, host.name) == (VM_ID, "vm1")
    root = ET.fromstring(host.xml)
    assert root.findtext("os/kernel") == "/srv/images/vmlinuz"
    assert root.findtext("os/initrd") == "/srv/images/initrd.img"
    assert root.find("devices/disk/source").get("file") == "/srv/data/img-1/vol-1"
    assert root.find("devices/serial/log").get("file") == \
        f"/var/log/kestrel/console/{VM_ID}.log"
    assert root.find("devices/channel/source").get("path") == \
        f"/var/lib/kestrel/channels/{VM_ID}.org.qemu.guest_agent.0"
    assert placeholders.PREFIX not in host.xml
    assert host.paths["console"] == [f"/var/log/kestrel/console/{VM_ID}.log"]
    # Everything else is the engine's and stays as written; metadata survives.
    assert root.findtext("os/cmdline") == "console=ttyS0"
    assert root.get("type") == "qemu"
    assert metadata.read(root).volumes[0].volume == "vol-1"
    assert f"xmlns:kestrel=\"{metadata.NAMESPACE}\"" in host.xml


def test_unknown_storage_domain_is_named():
    with pytest.raises(InvalidSpec, match="storage domain 'elsewhere' is not attached"):
        domxml.resolve(engine_xml("elsewhere"), ROOTS, DOMAINS)


@pytest.mark.parametrize("xml, message", [
    ("<domain><name>x</name>", "not well-formed XML"),
    ("<network/>", "root element is <network>"),
    ("<domain><name>x</name><uuid>vm1</uuid></domain>", "'vm1' is not a UUID"),
    (f"<domain><uuid>{VM_ID}</uuid></domain>", "has no <name>"),
    (f"<domain><name>x</name><uuid>{VM_ID}</uuid><os><kernel>/kestrel-placeholder/storage/"
     f"images/../../etc/shadow</kernel></os></domain>", "must be a relative path inside"),
])
def test_bad_xml_is_refused_with_the_reason(xml, message):
    with pytest.raises(InvalidSpec, match=message):
        domxml.resolve(xml, ROOTS, DOMAINS)


def test_disk_sources_and_console_log_are_read_back():
    host = domxml.resolve(engine_xml(), ROOTS, DOMAINS)
    assert domxml.disk_sources(host.xml) == {"/srv/data/img-1/vol-1"}
    assert domxml.console_log_path(host.xml) == f"/var/log/kestrel/console/{VM_ID}.log"


def test_a_storage_file_reached_through_a_link_out_of_its_domain_is_refused(tmp_path):
    for name in ("data", "images"):
        (tmp_path / name).mkdir()
    (tmp_path / "images" / "vmlinuz").symlink_to("/etc/shadow")
    domains = {"data": str(tmp_path / "data"), "images": str(tmp_path / "images")}
    with pytest.raises(InvalidSpec, match="vmlinuz is a symlink") as err:
        domxml.resolve(engine_xml(), ROOTS, domains)
    assert err.value.field == "storage_domain"
    (tmp_path / "images" / "vmlinuz").unlink()
    (tmp_path / "data" / "img-1").symlink_to("/etc")
    with pytest.raises(InvalidSpec, match="img-1 is a symlink"):
        domxml.resolve(engine_xml(), ROOTS, domains)


def test_disks_on_storage_open_no_backing_file_the_engine_did_not_describe():
    root = ET.fromstring(domxml.resolve(engine_xml(), ROOTS, DOMAINS).xml)
    disk = root.find("devices/disk")
    assert disk.find("backingStore") is not None and len(disk.find("backingStore")) == 0
    described = engine_xml().replace(
        "<target dev='vda'", "<backingStore type='file'><format type='qcow2'/><source file='"
        f"{placeholders.storage('data', 'img-1/base')}'/></backingStore><target dev='vda'")
    # A chain the metadata does not list is refused (test_backing_chains has the rules).
    with pytest.raises(InvalidSpec, match="not its backing volume in the metadata"):
        domxml.resolve(described, ROOTS, DOMAINS)
