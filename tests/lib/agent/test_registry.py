"""The VM registry: statuses from libvirt lifecycle events, recovery, pause and resume.

The Hypervisor tests run on libvirt's in-process test driver, whose state is
shared by every connection of this process: "someone else" (a guest powering
off, virsh) is a second connection changing the domain behind the agent's back.
"""

from __future__ import annotations

import time
import uuid

import libvirt
import pytest

from engine_lib.agent import registry
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.domains import EXIT_NAMESPACE
from engine_lib.agent.registry import Registry, event_status
from engine_lib.agent.states import VmStatus
from engine_lib.agent.vms import Hypervisor
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import Conflict, VmNotFound

URI = "test:///default"


@pytest.mark.parametrize("event, detail, requested, expected", [
    (registry.STARTED, 0, False, (VmStatus.UP, None)),
    (registry.SUSPENDED, 0, False, (VmStatus.PAUSED, None)),
    (registry.SUSPENDED, 2, False, (VmStatus.PAUSED, None)),           # I/O error
    (registry.SUSPENDED, 1, False, (VmStatus.MIGRATING_FROM, None)),   # migration
    (registry.RESUMED, 0, False, (VmStatus.UP, None)),
    (registry.SHUTDOWN, 1, False, (VmStatus.POWERING_DOWN, None)),
    (registry.STOPPED, 0, False, (VmStatus.DOWN, "user shutdown")),
    (registry.STOPPED, 0, True, (VmStatus.DOWN, "shutdown")),
    (registry.STOPPED, 1, False, (VmStatus.DOWN, "destroyed")),
    (registry.STOPPED, 3, False, (VmStatus.DOWN, "migrated")),
    (registry.STOPPED, 5, False, (VmStatus.DOWN, "failed")),
    (registry.CRASHED, 0, False, (VmStatus.DOWN, "crashed")),
    (registry.DEFINED, 0, False, None),
    (registry.UNDEFINED, 0, False, None),
])
def test_lifecycle_event_to_status(event, detail, requested, expected):
    assert event_status(event, detail, shutdown_requested=requested) == expected


def test_the_first_reason_a_vm_stopped_for_is_kept():
    reg = Registry()
    reg.set("a", "vm", VmStatus.UP)
    reg.set("a", "vm", VmStatus.DOWN, "destroyed")
    reg.on_event("a", registry.STOPPED, 0)  # late event of the same stop
    assert (reg.get("a").status, reg.get("a").exit_reason) == (VmStatus.DOWN, "destroyed")
    assert reg.on_event("unknown", registry.STARTED, 0) is None


def test_a_requested_shutdown_is_powering_down_then_an_admin_shutdown():
    reg = Registry()
    reg.set("a", "vm", VmStatus.UP)
    reg.request_shutdown("a", True)
    assert reg.get("a").status == VmStatus.POWERING_DOWN
    reg.on_event("a", registry.STOPPED, 0)
    assert reg.get("a").report() == {"id": "a", "name": "vm", "status": "Down",
                                     "exit_reason": "shutdown"}


# -- against libvirt's test driver -------------------------------------------------------


def _xml(vm_id: str, ours: bool = True) -> str:
    meta = (f"<metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>"
            "<kestrel:cluster>c</kestrel:cluster></kestrel:vm></metadata>") if ours else ""
    return (f"<domain type='test'><name>reg-{vm_id[:8]}</name><uuid>{vm_id}</uuid>{meta}"
            "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")


@pytest.fixture
def outsider():
    """A second connection: the guest, virsh, anyone but the agent."""
    conn = libvirt.open(URI)
    created: list[str] = []
    yield conn, created
    for vm_id in created:
        try:
            dom = conn.lookupByUUIDString(vm_id)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    conn.close()


def _hypervisor() -> Hypervisor:
    return Hypervisor(AgentConfig(name="t", address="127.0.0.1", port=0, libvirt_uri=URI,
                                  ca="/ca", cert="/c", key="/k", source="test"))


def _wait_for(hv: Hypervisor, vm_id: str, status: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = hv.status(vm_id)
        if report["status"] == status or time.monotonic() > deadline:
            return report
        time.sleep(0.02)


@pytest.fixture
def hv():
    hypervisor = _hypervisor()
    yield hypervisor
    hypervisor.close()


def _start(hv, outsider, ours=True) -> str:
    vm_id = str(uuid.uuid4())
    outsider[1].append(vm_id)
    assert hv.start(_xml(vm_id, ours))["status"] == "Up"
    return vm_id


def test_a_guest_that_powers_itself_off_is_down_with_user_shutdown(hv, outsider):
    vm_id = _start(hv, outsider)
    outsider[0].lookupByUUIDString(vm_id).shutdown()
    report = _wait_for(hv, vm_id, "Down")
    # libvirt's own reason would be "shutdown": this came from the event and the registry.
    assert (report["status"], report["exit_reason"]) == ("Down", "user shutdown")
    assert report["state"] == "shutoff"


def test_a_pause_behind_the_agents_back_is_seen(hv, outsider):
    vm_id = _start(hv, outsider)
    dom = outsider[0].lookupByUUIDString(vm_id)
    dom.suspend()
    assert _wait_for(hv, vm_id, "Paused")["status"] == "Paused"
    dom.resume()
    assert _wait_for(hv, vm_id, "Up")["status"] == "Up"


def test_a_late_start_or_pause_event_does_not_undo_a_newer_state(hv, outsider):
    """libvirt dispatches events on its own thread: a start's STARTED event can arrive
    after the VM was already paused (and a SUSPENDED one after it resumed)."""
    vm_id = _start(hv, outsider)
    dom = hv.connection().lookupByUUIDString(vm_id)
    assert hv.pause(vm_id)["status"] == "Paused"
    hv._on_lifecycle(dom, registry.STARTED, 0)
    hv._on_lifecycle(dom, registry.RESUMED, 0)
    assert hv.status(vm_id)["status"] == "Paused"
    assert hv.resume(vm_id)["status"] == "Up"
    hv._on_lifecycle(dom, registry.SUSPENDED, 0)
    assert hv.status(vm_id)["status"] == "Up"


def test_pause_and_resume_through_the_agent(hv, outsider):
    vm_id = _start(hv, outsider)
    assert hv.pause(vm_id)["status"] == "Paused"
    assert hv.pause(vm_id)["status"] == "Paused"  # idempotent
    assert outsider[0].lookupByUUIDString(vm_id).state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert hv.resume(vm_id)["status"] == "Up"
    assert hv.resume(vm_id)["status"] == "Up"
    hv.destroy(vm_id)
    with pytest.raises(Conflict, match="cannot pause VM .* it is shutoff, not running"):
        hv.pause(vm_id)


def test_a_down_vm_stays_listed_with_its_reason_until_removed(hv, outsider):
    vm_id = str(uuid.uuid4())
    outsider[1].append(vm_id)
    # A transient domain: libvirt forgets it as soon as it stops.
    outsider[0].createXML(_xml(vm_id), 0)
    assert _wait_for(hv, vm_id, "Up")["status"] == "Up"  # adopted from its STARTED event
    outsider[0].lookupByUUIDString(vm_id).destroy()
    with pytest.raises(libvirt.libvirtError):
        outsider[0].lookupByUUIDString(vm_id)
    report = _wait_for(hv, vm_id, "Down")
    assert (report["status"], report["exit_reason"]) == ("Down", "destroyed")
    assert vm_id in [vm["id"] for vm in hv.list_vms()]
    assert hv.remove(vm_id) == {"id": vm_id, "removed": True}
    assert vm_id not in [vm["id"] for vm in hv.list_vms()]
    with pytest.raises(VmNotFound):
        hv.status(vm_id)


def test_recovery_rebuilds_the_registry_without_restarting_anything(hv, outsider):
    running, paused, down = (_start(hv, outsider) for _ in range(3))
    hv.pause(paused)
    hv.destroy(down)
    foreign = _start(hv, outsider, ours=False)  # no kestrel metadata: not ours
    ids_before = {vm["id"]: vm["domain_id"] for vm in hv.list_vms()}

    fresh = _hypervisor()  # the agent, restarted
    try:
        listed = {vm["id"]: vm for vm in fresh.list_vms()}
        assert {vm_id: listed[vm_id]["status"] for vm_id in (running, paused, down)} == \
            {running: "Up", paused: "Paused", down: "Down"}
        assert listed[down]["exit_reason"] == "destroyed"
        assert foreign not in listed
        assert {vm_id: listed[vm_id]["domain_id"] for vm_id in (running, paused, down)} == \
            {vm_id: ids_before[vm_id] for vm_id in (running, paused, down)}
        assert listed[running]["domain_id"] is not None
    finally:
        fresh.close()


def test_a_restarted_agent_still_knows_why_a_vm_stopped(hv, outsider):
    by_guest, by_agent = _start(hv, outsider), _start(hv, outsider)
    outsider[0].lookupByUUIDString(by_guest).shutdown()
    assert _wait_for(hv, by_guest, "Down")["exit_reason"] == "user shutdown"
    hv.destroy(by_agent)

    fresh = _hypervisor()
    try:
        # libvirt alone would say "shutdown" for the first: the reason was noted.
        assert fresh.status(by_guest)["exit_reason"] == "user shutdown"
        assert fresh.status(by_agent)["exit_reason"] == "destroyed"
        # A fresh start redefines the domain from the engine's XML: the note is gone.
        dom = outsider[0].lookupByUUIDString(by_guest)
        assert EXIT_NAMESPACE in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        hv.start(_xml(by_guest))
        assert EXIT_NAMESPACE not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        fresh.close()
