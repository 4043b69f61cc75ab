"""Revision 0015: a database that already holds one MAC on two NICs upgrades to unique MACs."""

import json

from sqlalchemy import text

from engine_lib.engine import Engine
from engine_lib.store import Store, upgrade

POOL = json.dumps(["56:6f:4b:00:00:00-56:6f:4b:00:00:ff"])
NIC = {"name": "nic1", "network": "br0", "model": "virtio", "mac": "56:6f:4b:00:00:00"}


def _vm(conn, vm_id, cluster, created):
    conn.execute(text(
        "INSERT INTO vms (id, name, cluster_id, description, memory_mib, sockets, cores, "
        "threads, machine, kernel, initrd, cmdline, custom_properties, status, exit_reason, "
        "created_at, version) VALUES (:id, :id, :cluster, '', 256, 1, 1, 1, 'q35', '', '', '', "
        "'{}', 'Down', '', :created, 1)"), {"id": vm_id, "cluster": cluster, "created": created})


def _device(conn, device_id, vm_id, type_, spec, alias=""):
    conn.execute(text(
        "INSERT INTO vm_devices (id, vm_id, type, name, position, managed, plugged, spec, "
        "alias, address) VALUES (:id, :vm, :type, :name, 0, :yes, :yes, :spec, :alias, '{}')"),
        {"id": device_id, "vm": vm_id, "type": type_, "name": spec["name"], "yes": True,
         "spec": json.dumps(spec), "alias": alias})


def test_duplicate_macs_are_reassigned_and_audited(db_url, tmp_path):
    store = Store(db_url)
    upgrade(store.engine, "0011")
    with store.engine.begin() as conn:
        for cluster in ("c-1", "c-2"):  # two clusters on the same default range
            conn.execute(text(
                "INSERT INTO clusters (id, name, description, virt_type, "
                "memory_overcommit_percent, mac_pool, version) "
                "VALUES (:id, :id, '', 'qemu', 100, :pool, 1)"), {"id": cluster, "pool": POOL})
        _vm(conn, "old", "c-1", "2026-01-01 00:00:00")
        _vm(conn, "new", "c-2", "2026-02-01 00:00:00")
        _vm(conn, "next", "c-1", "2026-03-01 00:00:00")
        _device(conn, "d-1", "new", "interface", NIC)
        _device(conn, "d-2", "old", "interface", NIC)
        _device(conn, "d-3", "next", "interface", {**NIC, "mac": "56:6f:4b:00:00:01"})
        _device(conn, "d-4", "old", "disk", {"name": "ran"}, alias="ua-d-4")
        _device(conn, "d-5", "old", "disk", {"name": "never"})
    store.close()

    with Engine.open(engine_dir=str(tmp_path), db_url=db_url,
                     agent_factory=lambda *_: None) as engine:
        macs = {vm["name"]: vm["nics"][0]["mac"] for vm in engine.vms.info()}
        # The oldest VM keeps it; the other takes the lowest address nobody holds.
        assert macs == {"old": "56:6f:4b:00:00:00", "new": "56:6f:4b:00:00:02",
                        "next": "56:6f:4b:00:00:01"}
        events = [e["message"] for e in engine.events.info() if e["entity_name"] == "new"]
        assert any("MAC 56:6f:4b:00:00:00 was also another VM's; it is now "
                   "56:6f:4b:00:00:02" in message for message in events)
        with engine.store.transaction(commit=False) as session:
            created = dict(session.execute(text(
                "SELECT id, volume_created FROM vm_devices WHERE type = 'disk'")).all())
        assert created == {"d-4": True, "d-5": False}
