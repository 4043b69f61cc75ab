"""A VM spec reaches no host file or device; registered LUNs and storage domain files do.

The engine and real agents on lab hosts: specs naming /etc/shadow, /dev/mem or a
placeholder are refused before anything is stored, the agent itself refuses such
XML and a link out of a storage domain, and a loop device registered as a LUN plus
an ISO from the "images" storage domain reach a booting guest.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET

import pytest
from agent_fixtures import guest_domain_xml
from test_engine_on_lab import cluster, tiny_guest, wait_for_console  # noqa: F401  (fixture)

from engine_lib.protocol import placeholders
from engine_lib.protocol.errors import InvalidSpec
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("change, field", [
    ({"kernel": "/etc/shadow"}, "kernel"),
    ({"cdrom": "/etc/kestrel/pki/agent.key"}, "cdrom.iso"),
    ({"disks": [{"name": "mem", "lun": "/dev/mem"}]}, "disks[0].lun"),
    ({"initrd": "/kestrel-placeholder/console/6f1d2c9e-8a4b-4c1e-9f7a-0123456789ab.log"},
     "initrd"),
    ({"disks": [{"name": "other", "lun": "notregistered"}]}, "disks[0].lun"),
])
def test_a_spec_naming_a_host_path_is_refused(engine, cluster, change, field):
    with pytest.raises(InvalidSpec) as caught:
        engine.vms.ensure({**tiny_guest("thief"), **change}, state="running")
    assert caught.value.field == field
    assert engine.vms.info("thief") == []


def test_the_agent_refuses_host_paths_and_links_out_of_a_storage_domain(agents, lab):
    client = agents[0].client()
    xml, _ = guest_domain_xml()
    shadow_cd = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
                 "<source file='{}'/><target dev='hdc' bus='ide'/><readonly/></disk>")
    stolen = xml.replace("<serial type='pty'>", shadow_cd.format("/etc/shadow")
                         + "<serial type='pty'>", 1)
    with pytest.raises(InvalidSpec, match="a host path the engine did not write"):
        client.start_vm(stolen)
    images = lab_hosts.shared_dir(lab[0].state_dir, "images")
    link = os.path.join(images, "spec-paths-shadow.iso")
    os.symlink("/etc/shadow", link)
    try:
        linked = xml.replace("<serial type='pty'>", shadow_cd.format(
            placeholders.storage("images", "spec-paths-shadow.iso")) + "<serial type='pty'>", 1)
        with pytest.raises(InvalidSpec, match="spec-paths-shadow.iso is a symlink"):
            client.start_vm(linked)
    finally:
        os.unlink(link)
    vm_id = ET.fromstring(xml).findtext("uuid")
    assert all(vm["id"] != vm_id for vm in client.list_vms())


@pytest.fixture
def loop_device(tmp_path):
    backing = tmp_path / "lun.img"
    backing.write_bytes(b"\0" * (16 * 2**20))
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    yield device
    subprocess.run(["losetup", "--detach", device], check=True)


def test_a_registered_lun_and_an_iso_from_a_storage_domain_reach_the_guest(
        engine, cluster, agents, lab, loop_device):
    engine.luns.register("lab-lun", loop_device, description="a loop device in the lab")
    spec = {**tiny_guest("lunguest"), "cdrom": "images:initrd.img",
            "disks": [*tiny_guest("x")["disks"], {"name": "lun", "lun": "lab-lun"}]}
    try:
        vm = engine.vms.ensure(spec, state="running").entity
        assert vm["status"] == "Up"
        console = wait_for_console(engine, "lunguest", "kestrel-guest: disks")
        line = next(x for x in console.splitlines() if "kestrel-guest: disks" in x)
        assert line.split()[2:4] == ["vda", "vdb"], line  # the volume, then the LUN
        agent = next(a for a in agents if a.name == vm["host"])
        live = ET.fromstring(agent.client().vm_xml(vm["id"]))
        assert live.find("devices/disk[@type='block']/source").get("dev") == loop_device
        images = lab_hosts.shared_dir(lab[0].state_dir, "images")
        assert live.find("devices/disk[@device='cdrom']/source").get("file") == \
            f"{images}/initrd.img"
    finally:
        engine.vms.ensure({"name": "lunguest"}, state="absent")
    engine.luns.remove("lab-lun")
