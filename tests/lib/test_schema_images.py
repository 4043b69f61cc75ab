"""Revision 0017: every disk a VM had before volume chains gets its volume row; and the
schema the revisions build is the one the model declares (no drift for any revision)."""

import json

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from engine_lib.model import Base
from engine_lib.store import Store, upgrade


def test_existing_disks_get_their_volume_rows(db_url):
    store = Store(db_url)
    upgrade(store.engine, "0016")
    disk = {"name": "root", "storage_domain": "data", "format": "raw", "size_mib": 2048,
            "image_id": "i-1", "volume_id": "v-1", "readonly": True}
    lun = {"name": "db", "lun": "wwn-1", "format": "raw"}
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO clusters (id, name, description, virt_type, memory_overcommit_percent, "
            "mac_pool, version) VALUES ('c-1', 'old', '', 'qemu', 150, '[]', 1)"))
        conn.execute(text(
            "INSERT INTO vms (id, name, cluster_id, description, memory_mib, sockets, cores, "
            "threads, machine, kernel, initrd, cmdline, custom_properties, status, exit_reason, "
            "created_at, version) VALUES ('vm-1', 'vm1', 'c-1', '', 256, 1, 1, 1, 'q35', '', "
            "'', '', '{}', 'Down', '', CURRENT_TIMESTAMP, 1)"))
        for device_id, spec in (("d-1", disk), ("d-2", lun)):
            conn.execute(text(
                "INSERT INTO vm_devices (id, vm_id, type, name, position, managed, plugged, spec, "
                "alias, address, guest_name, volume_created) VALUES (:id, 'vm-1', 'disk', "
                ":name, 0, true, true, :spec, '', '{}', '', true)"),
                {"id": device_id, "name": spec["name"], "spec": json.dumps(spec)})
    upgrade(store.engine, "head")
    with store.engine.begin() as conn:
        rows = conn.execute(text(
            "SELECT id, image_id, storage_domain, format, size_mib, parent_id, readonly, status "
            "FROM volumes")).all()
    store.close()
    # The disk's own readonly is how the guest sees it; the volume is no template's.
    assert [tuple(r) for r in rows] == [("v-1", "i-1", "data", "raw", 2048, None, False, "ok")]


def test_the_migrated_schema_is_the_models(db_url):
    store = Store(db_url)
    upgrade(store.engine, "head")
    with store.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    store.close()
    assert differences == []
