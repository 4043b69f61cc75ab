"""The agent hands libvirt only host paths its own placeholders resolved, inside their roots."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import pytest

from engine_lib.agent import domxml, hotplug
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.protocol.metadata import VolumeRef

VM_ID = "6f1d2c9e-8a4b-4c1e-9f7a-0123456789ab"
IMAGE = "0b5e7c1a-1111-4222-8333-444455556666"
VOLUME = "9a8b7c6d-1111-4222-8333-444455556666"


@pytest.fixture
def host(tmp_path):
    """A storage domain with a kernel, a link out of it, and the agent's roots."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "vmlinuz").write_bytes(b"kernel")
    os.symlink("/etc/shadow", images / "shadow.iso")
    os.symlink(str(images / "vmlinuz"), images / "latest")
    roots = {kind: str(tmp_path / kind) for kind in ("channels", "payload", "console", "nvram")}
    return roots, {"images": str(images)}


def domain(os_xml: str = "", devices: str = "", meta: str = "") -> str:
    return f"""<domain type='qemu'><name>vm1</name><uuid>{VM_ID}</uuid>
  <description>a VM</description>
  <metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>{meta}</kestrel:vm></metadata>
  <os><type arch='x86_64'>hvm</type>{os_xml}</os>
  <devices>{devices}</devices></domain>"""


def kernel(value: str) -> str:
    return domain(f"<kernel>{value}</kernel>")


def test_a_boot_file_inside_its_storage_domain_resolves(host):
    roots, domains = host
    xml = domxml.resolve(kernel(placeholders.storage("images", "vmlinuz")), roots, domains).xml
    assert ET.fromstring(xml).findtext("os/kernel") == f"{domains['images']}/vmlinuz"
    # Storage is written by other hosts: no link is followed, even one that stays inside.
    with pytest.raises(InvalidSpec, match="latest is a symlink"):
        domxml.resolve(kernel(placeholders.storage("images", "latest")), roots, domains)


def test_a_link_out_of_the_storage_domain_is_refused(host):
    roots, domains = host
    cdrom = (f"<disk type='file' device='cdrom'><source file='"
             f"{placeholders.storage('images', 'shadow.iso')}'/></disk>")
    with pytest.raises(InvalidSpec, match="shadow.iso is a symlink"):
        domxml.resolve(domain(devices=cdrom), roots, domains)


@pytest.mark.parametrize("xml", [
    kernel("/etc/kestrel/pki/agent.key"),
    domain(devices="<disk type='file' device='cdrom'><source file='/etc/shadow'/></disk>"),
    domain(devices="<disk type='block' device='disk'><source dev='/dev/mem'/></disk>"),
    domain(devices="<serial type='pty'><log file='/root/.bashrc'/></serial>"),
    domain(devices="<channel type='unix'><source mode='bind' path='/run/libvirt/sock'/>"
                   "</channel>"),
])
def test_a_host_path_not_written_as_a_placeholder_is_refused(host, xml):
    roots, domains = host
    with pytest.raises(InvalidSpec, match="a host path the engine did not write as a "
                                          "placeholder"):
        domxml.resolve(xml, roots, domains)


def test_a_placeholder_of_the_wrong_kind_is_refused(host):
    """A kernel that is another VM's console log, or a disk that is its channel socket."""
    roots, domains = host
    other = "11111111-2222-4333-8444-555555555555"
    with pytest.raises(InvalidSpec, match="only a storage placeholder belongs here"):
        domxml.resolve(kernel(placeholders.console_log(other)), roots, domains)
    disk = f"<disk type='block'><source dev='{placeholders.storage('images', 'vmlinuz')}'/></disk>"
    with pytest.raises(InvalidSpec, match="only a lun placeholder belongs here"):
        domxml.resolve(domain(devices=disk), roots, domains)


def test_a_placeholder_where_no_path_belongs_is_refused(host):
    roots, domains = host
    xml = domain().replace("<description>a VM</description>",
                           f"<description>{placeholders.console_log(VM_ID)}</description>")
    with pytest.raises(InvalidSpec, match="a placeholder where no host path belongs"):
        domxml.resolve(xml, roots, domains)


def test_another_vms_volume_is_not_a_boot_file(host):
    roots, domains = host
    with pytest.raises(InvalidSpec, match="inside a disk image directory"):
        domxml.resolve(kernel(placeholders.storage("images", f"{IMAGE}/{VOLUME}")),
                       roots, domains)
    # The VM's own volume, listed in its metadata, is its disk.
    own = domain(devices=f"<disk type='file'><source file='"
                         f"{placeholders.storage('images', f'{IMAGE}/{VOLUME}')}'/></disk>",
                 meta=f"<kestrel:volume alias='ua-d' domain='images' image='{IMAGE}' "
                      f"volume='{VOLUME}' format='qcow2' size_mib='1'/>")
    assert domxml.resolve(own, roots, domains).paths["storage"]


def lun_disk(name: str) -> str:
    return (f"<disk type='block' device='disk'><source dev='{placeholders.lun(name)}'/>"
            f"<target dev='sda' bus='scsi'/></disk>")


def test_a_lun_resolves_only_through_the_engines_registration(host, tmp_path):
    roots, domains = host
    with pytest.raises(InvalidSpec, match="LUN 'db' is not registered by the engine"):
        domxml.resolve(domain(devices=lun_disk("db")), roots, domains)
    # Registered, but not a block device: /dev/null is a character device.
    registered = domain(devices=lun_disk("db"),
                        meta="<kestrel:lun name='db' path='/dev/null'/>")
    with pytest.raises(InvalidSpec, match="is not a block device"):
        domxml.resolve(registered, roots, domains)
    link = tmp_path / "disk"
    os.symlink("/etc/shadow", link)
    outside = domain(devices=lun_disk("db"), meta=f"<kestrel:lun name='db' path='{link}'/>")
    with pytest.raises(InvalidSpec, match="outside /dev"):
        domxml.resolve(outside, roots, domains)


def test_a_block_device_is_a_lun():
    from engine_lib.agent import paths

    loops = [f"/dev/{n}" for n in sorted(os.listdir("/dev")) if n.startswith("loop")
             and n[4:].isdigit()]
    assert loops, "the kernel has loop devices built in (ENVIRONMENT.md)"
    assert paths.block_device(loops[0], "lun") == loops[0]


def test_hotplug_follows_the_same_rules(host):
    roots, domains = host
    device = ET.fromstring("<disk type='file' device='disk'><source file='/etc/shadow'/>"
                           "<alias name='ua-x'/></disk>")
    with pytest.raises(InvalidSpec, match="did not write as a placeholder"):
        hotplug.resolve(device, roots, domains)
    device = ET.fromstring(lun_disk("db").replace("</disk>", "<alias name='ua-x'/></disk>"))
    with pytest.raises(InvalidSpec, match="not registered"):
        hotplug.resolve(device, roots, domains)
    volume = VolumeRef(alias="ua-x", domain="images", image=IMAGE, volume=VOLUME,
                       format="qcow2", size_mib=1)
    device = ET.fromstring(f"<disk type='file'><source file='"
                           f"{placeholders.storage('images', f'{IMAGE}/{VOLUME}')}'/></disk>")
    _, used = hotplug.resolve(device, roots, domains, volume=volume)
    assert used == [f"{domains['images']}/{IMAGE}/{VOLUME}"]


def test_an_rng_backend_is_one_of_the_entropy_devices(host):
    roots, domains = host
    rng = "<rng model='virtio'><backend model='random'>{}</backend></rng>"
    domxml.resolve(domain(devices=rng.format("/dev/urandom")), roots, domains)
    with pytest.raises(InvalidSpec, match="not one of /dev/urandom"):
        domxml.resolve(domain(devices=rng.format("/dev/sda")), roots, domains)
