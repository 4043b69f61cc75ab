"""Hibernate and restore on libvirt's test driver with real files: the memory volume
is never reached through a link out of its storage domain."""

from __future__ import annotations

import uuid

import pytest

from engine_lib.agent import domains, domxml, hibernation
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.vm_start import FreshStart
from engine_lib.agent.vms import Hypervisor
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import InvalidSpec

MEMORY = VolumeLocation("sd1", "img", "mem")


@pytest.fixture
def hv(tmp_path, monkeypatch):
    monkeypatch.setattr(domains, "UNDEFINE_FLAGS", 0)  # the test driver takes no flags
    (tmp_path / "sd1").mkdir()
    (tmp_path / "outside").mkdir()
    hypervisor = Hypervisor(AgentConfig(
        name="t", address="127.0.0.1", port=0, libvirt_uri="test:///default", ca="/ca",
        cert="/c", key="/k", source="test", storage_domains={"sd1": str(tmp_path / "sd1")}))
    yield hypervisor
    for record in hypervisor.registry.all():
        dom = hypervisor.find(record.id)
        if dom is not None and dom.isActive():
            dom.destroy()
        if dom is not None and dom.isPersistent():
            dom.undefine()
    hypervisor.close()


def _xml() -> str:
    vm_id = str(uuid.uuid4())
    return (f"<domain type='test'><name>hib-{vm_id[:8]}</name><uuid>{vm_id}</uuid>"
            f"<metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>"
            "<kestrel:cluster>c</kestrel:cluster></kestrel:vm></metadata>"
            "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")


def _running(hv) -> str:
    host = domxml.resolve(_xml(), hv.config.paths, hv.config.storage_domains)
    FreshStart(hv, host).run()
    return host.uuid


def test_hibernate_saves_into_the_domain(hv, tmp_path):
    answer = hibernation.hibernate(hv, _running(hv), MEMORY)
    assert answer["size_bytes"] == (tmp_path / "sd1" / "img" / "mem").stat().st_size > 0


@pytest.mark.parametrize("link", ["image", "volume"])
def test_hibernate_refuses_a_link_out_of_the_domain(hv, tmp_path, link):
    outside = tmp_path / "outside"
    if link == "image":
        (tmp_path / "sd1" / "img").symlink_to(outside)
    else:
        (tmp_path / "sd1" / "img").mkdir()
        (tmp_path / "sd1" / "img" / "mem").symlink_to(outside / "mem")  # dangling
    vm_id = _running(hv)
    with pytest.raises(InvalidSpec, match="is a symlink"):
        hibernation.hibernate(hv, vm_id, MEMORY)
    assert list(outside.iterdir()) == []
    assert hv.report(hv.lookup(vm_id))["status"] == "Up"


def test_restore_refuses_a_link_out_of_the_domain_and_keeps_the_file_there(
        hv, tmp_path, monkeypatch):
    # A saved state outside, reached through a linked image directory.
    xml = _xml()
    vm_id = _running(hv)
    (tmp_path / "sd1" / "img").symlink_to(tmp_path / "outside")
    hv.lookup(vm_id).save(str(tmp_path / "outside" / "mem"))
    hv.lookup(vm_id).undefine()
    size = (tmp_path / "outside" / "mem").stat().st_size
    # The test driver cannot restore into new XML: booting stands in for it.
    monkeypatch.setattr(hibernation.Restore, "launch", lambda self, conn, dom, xml: dom.create())
    with pytest.raises(InvalidSpec, match="img is a symlink"):
        hibernation.restore(hv, xml, MEMORY)
    assert (tmp_path / "outside" / "mem").stat().st_size == size
