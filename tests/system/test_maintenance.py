"""Host maintenance for real: VMs migrate live off a lab host, which then stays out of scheduling.

Every check of "where does the VM run" asks the libvirt daemons of all three lab
hosts (virsh inside each), not just the database.
"""

from __future__ import annotations

import pytest
from test_migration import copies, tiny_guest, wait_for_console

from engine_lib.protocol.errors import Conflict

pytestmark = pytest.mark.lab


@pytest.fixture
def crowded_h1(engine, agents, lab_guest):
    """Two running guests on h1 (registered alone while they start), then h2 and h3 join.

    ``make(name, pinned=...)`` adds more. Every guest is removed at the end and no
    domain of it may stay on any host.
    """
    # The lab's libvirtds serve plain qemu+tcp (TLS: test_migration_tls.py).
    engine.clusters.ensure("lab", virt_type="qemu", migration_encrypted=False)
    hosts = {agent.name: agent for agent in agents}
    engine.hosts.ensure("h1", address=hosts["h1"].address, cluster="lab")
    created = []

    def make(name: str, **extra) -> dict:
        vm = engine.vms.ensure(tiny_guest(name, **extra), state="running").entity
        created.append(vm)
        wait_for_console(engine, name, "kestrel-guest: up")
        return vm

    for name in ("mnt-a", "mnt-b"):
        assert make(name)["host"] == "h1"
    for name in ("h2", "h3"):
        engine.hosts.ensure(name, address=hosts[name].address, cluster="lab")
    yield make, created
    for name in ("h1", "h2", "h3"):
        engine.hosts.activate(name)
    for vm in created:
        engine.vms.ensure({"name": vm["name"]}, state="absent")
        assert copies(agents, vm["id"]) == {}, "a domain stayed behind"


def test_maintenance_moves_every_vm_away_live_then_active_brings_the_host_back(
        engine, agents, crowded_h1, playbook):
    _make, created = crowded_h1

    task = {"kestrel.virt.host": {"name": "h1", "state": "maintenance"}}
    predicted, real, again = playbook.run([{**task, "check_mode": True}, task, task])

    # Check mode: the moves it would make, and nothing moved.
    assert predicted["changed"] and predicted["host"]["status"] == "Maintenance"
    planned = {m["vm"]: m["destination"] for m in predicted["host"]["migrations"]}
    assert sorted(planned) == ["mnt-a", "mnt-b"]
    assert set(planned.values()) <= {"h2", "h3"}

    # The real run: both VMs migrated live, each now running exactly once, not on h1.
    assert real.get("failed") is not True, real.get("msg")
    assert real["changed"] and real["host"]["status"] == "Maintenance"
    moved = {m["vm"]: m for m in real["host"]["migrations"]}
    assert sorted(moved) == ["mnt-a", "mnt-b"]
    assert all(m["status"] == "succeeded" for m in moved.values())
    assert {vm: m["destination"] for vm, m in moved.items()} == planned
    for vm in created:
        destination = moved[vm["name"]]["destination"]
        assert copies(agents, vm["id"]) == {destination: "running"}
        row = engine.vms.info(vm["name"])[0]
        assert (row["status"], row["host"]) == ("Up", destination)
    assert engine.hosts.info("h1")[0]["status"] == "Maintenance"
    assert not again["changed"]

    # Nothing new starts on a host in maintenance.
    _make("mnt-c")
    assert engine.vms.info("mnt-c")[0]["host"] in {"h2", "h3"}

    messages = [e["message"] for e in engine.events.info(entity_type="host", entity_name="h1")]
    assert any(m.startswith("host is PreparingForMaintenance: migrating mnt-a") for m in messages)
    assert messages[-1].startswith("host is in Maintenance: mnt-a migrated to ")

    active, active_again = playbook.run([
        {"kestrel.virt.host": {"name": "h1", "state": "active"}},
        {"kestrel.virt.host": {"name": "h1", "state": "active"}},
    ])
    assert active["changed"] and active["host"]["status"] == "Up"
    assert not active_again["changed"]
    assert engine.hosts.info("h1")[0]["status"] == "Up"


def test_a_pinned_vm_refuses_maintenance_at_once_and_nothing_moves(engine, agents, crowded_h1):
    make, created = crowded_h1
    stuck = make("mnt-pinned", placement={"hosts": ["h1"]})
    assert stuck["host"] == "h1"
    before = {vm["name"]: copies(agents, vm["id"]) for vm in created}
    assert all(where == {"h1": "running"} for where in before.values())

    with pytest.raises(Conflict) as err:
        engine.hosts.maintenance("h1")

    assert "VM 'mnt-pinned'" in err.value.message
    assert "the VM is pinned to h1" in err.value.message
    assert list(err.value.details["refused"]) == ["mnt-pinned"]
    assert engine.hosts.info("h1")[0]["status"] == "Up"
    assert {vm["name"]: copies(agents, vm["id"]) for vm in created} == before
    assert engine.migrations.active() == []
    assert all(engine.migrations.history(vm["name"]) == [] for vm in created)
