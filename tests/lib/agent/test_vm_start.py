"""The one start sequence (engine_lib.agent.vm_start), on libvirt's test driver.

The test driver cannot restore a saved state into new XML nor receive a
migration, so the modes' libvirt calls are replaced where needed; the
sequence around them (lock, checks, registry, rollback, after steps) is the
real one.
"""

from __future__ import annotations

import uuid

import pytest

from engine_lib.agent import domains, domxml
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.hibernation import Restore
from engine_lib.agent.migration import IncomingStart
from engine_lib.agent.vm_start import FreshStart
from engine_lib.agent.vms import Hypervisor
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import Conflict, LibvirtError, NotFound

URI = "test:///default"


@pytest.fixture
def hv(tmp_path, monkeypatch):
    monkeypatch.setattr(domains, "UNDEFINE_FLAGS", 0)  # the test driver takes no flags
    (tmp_path / "sd1").mkdir()
    hypervisor = Hypervisor(AgentConfig(
        name="t", address="127.0.0.1", port=0, libvirt_uri=URI, ca="/ca", cert="/c",
        key="/k", source="test", storage_domains={"sd1": str(tmp_path / "sd1")}))
    yield hypervisor
    for record in hypervisor.registry.all():
        dom = hypervisor.find(record.id)
        if dom is not None and dom.isActive():
            dom.destroy()
        if dom is not None and dom.isPersistent():
            dom.undefine()
    hypervisor.close()


def _host(hv: Hypervisor) -> domxml.HostDomain:
    vm_id = str(uuid.uuid4())
    xml = (f"<domain type='test'><name>start-{vm_id[:8]}</name><uuid>{vm_id}</uuid>"
           f"<metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>"
           "<kestrel:cluster>c</kestrel:cluster></kestrel:vm></metadata>"
           "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")
    return domxml.resolve(xml, hv.config.paths, hv.config.storage_domains)


class _Refused(FreshStart):
    def launch(self, conn, dom, xml):
        raise LibvirtError("libvirt could not start it", vm_id=self.host.uuid)


def test_a_launch_libvirt_refuses_leaves_no_domain_and_no_registry_entry(hv):
    host = _host(hv)
    with pytest.raises(LibvirtError):
        _Refused(hv, host).run()
    assert hv.find(host.uuid) is None
    assert host.uuid not in hv.registry


def test_a_refused_launch_keeps_a_domain_that_was_defined_before(hv):
    host = _host(hv)
    FreshStart(hv, host).run()
    hv.destroy(host.uuid)
    with pytest.raises(LibvirtError):
        _Refused(hv, host).run()
    assert hv.find(host.uuid) is not None
    record = hv.registry.get(host.uuid)
    assert (record.status.value, record.exit_reason) == ("Down", "destroyed")


def test_a_fresh_start_of_a_running_vm_reports_it_unstarted(hv):
    host = _host(hv)
    assert FreshStart(hv, host).run()["started"] is True
    again = FreshStart(hv, host).run()
    assert (again["started"], again["status"]) == (False, "Up")


class _RestoreByBoot(Restore):
    """The test driver cannot restore into new XML: booting stands in for the restore."""

    def launch(self, conn, dom, xml):
        dom.create()


def test_a_restored_vm_is_up_and_its_memory_volume_is_gone(hv, tmp_path):
    host = _host(hv)
    memory = tmp_path / "sd1" / "img" / "memory"
    memory.parent.mkdir()
    memory.write_bytes(b"saved state")
    answer = _RestoreByBoot(hv, host, VolumeLocation("sd1", "img", "memory")).run()
    assert (answer["started"], answer["status"]) == (True, "Up")
    assert not memory.exists()
    assert hv.registry.get(host.uuid).status.value == "Up"


def test_a_failed_restore_keeps_the_memory_volume_to_try_again(hv, tmp_path):
    host = _host(hv)
    memory = tmp_path / "sd1" / "img" / "memory"
    memory.parent.mkdir()
    memory.write_bytes(b"saved state")
    with pytest.raises(LibvirtError):
        Restore(hv, host, VolumeLocation("sd1", "img", "memory")).run()  # the test driver refuses the new XML
    assert memory.exists()
    assert hv.find(host.uuid) is None and host.uuid not in hv.registry


def test_an_incoming_vm_is_registered_migrating_to_without_a_domain(hv):
    host = _host(hv)
    answer = IncomingStart(hv.migrations, host.xml, host).run()
    assert (answer["status"], answer["started"]) == ("MigratingTo", False)
    assert hv.find(host.uuid) is None
    assert hv.migrations.report(host.uuid)["role"] == "destination"


def test_an_incoming_vm_the_host_cannot_prepare_frees_its_migration_slot(hv):
    class Unprepared(IncomingStart):
        def bring_up(self, xml, existing):
            raise LibvirtError("no room", vm_id=self.host.uuid)

    host = _host(hv)
    with pytest.raises(LibvirtError):
        Unprepared(hv.migrations, host.xml, host).run()
    with pytest.raises(NotFound):
        hv.migrations.report(host.uuid)
    assert host.uuid not in hv.registry


def test_a_name_another_domain_holds_is_refused_before_anything_changes(hv):
    host = _host(hv)
    FreshStart(hv, host).run()
    other = _host(hv)
    clash = domxml.HostDomain(other.uuid, host.name, other.xml.replace(other.name, host.name),
                              other.metadata, other.paths)
    with pytest.raises(Conflict, match="different domain named"):
        FreshStart(hv, clash).run()
    assert other.uuid not in hv.registry
    assert hv.connection().lookupByName(host.name).UUIDString() == host.uuid


def test_the_host_lists_a_vm_as_starting_while_its_before_hooks_run(hv, monkeypatch):
    """An engine whose start call timed out during a slow hook asks the host: the answer
    must be "starting", not "no such VM" (which made the engine start a second copy)."""
    from engine_lib.agent import vm_start

    host = _host(hv)
    seen = []

    def slow_hook(point, xml, vm_id, *args, **kwargs):
        seen.append((hv.status(vm_id)["status"], [vm["id"] for vm in hv.list_vms()]))
        return xml

    monkeypatch.setattr(vm_start.hooks, "run", slow_hook)
    FreshStart(hv, host).run()
    assert seen == [("WaitForLaunch", [host.uuid])]


def test_a_before_hook_that_fails_leaves_the_host_not_listing_the_vm(hv, monkeypatch):
    from engine_lib.agent import vm_start
    from engine_lib.protocol.errors import HookError, VmNotFound

    host = _host(hv)

    def refusing_hook(point, *args, **kwargs):
        raise HookError(f"hook {point}/10_refuse failed with exit status 1", hook_point=point)

    monkeypatch.setattr(vm_start.hooks, "run", refusing_hook)
    with pytest.raises(HookError):
        FreshStart(hv, host).run()
    assert host.uuid not in hv.registry and hv.list_vms() == []
    with pytest.raises(VmNotFound):
        hv.status(host.uuid)
