"""Revision 0013: fence agents by name, finite fencing policies, recorded SSH host keys."""

import json

from sqlalchemy import text

from engine_lib.engine import Engine
from engine_lib.store import Store, upgrade


def test_upgrade_names_fence_agents_and_drops_unbounded_fencing_durations(
        db_url, tmp_path, agents):
    store = Store(db_url)
    upgrade(store.engine, "0011")
    # PostgreSQL's JSON has no Infinity (there it failed with a raw DataError instead).
    huge = "1e300" if db_url.startswith("postgresql") else "Infinity"
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO clusters (id, name, description, virt_type, memory_overcommit_percent, "
            "mac_pool, version, fencing_policy) VALUES ('c-1', 'old', '', 'qemu', 100, '[]', 1, "
            f"'{{\"power_timeout_s\": {huge}, \"soft_fence_grace_s\": 5}}')"))
        conn.execute(text(
            "INSERT INTO hosts (id, name, cluster_id, address, port, status, hostname, host_uuid, "
            "cpus, memory_mib, libvirt_version, version, power_management) VALUES ('h-1', 'h1', "
            "'c-1', '10.0.4.1', 54321, 'Up', 'h1', 'u', 4, 4096, '9.0.0', 1, :pm)"),
            {"pm": json.dumps({"agent": "/usr/sbin/fence_ipmilan", "options": {"ip": "x"}})})
    store.close()

    with Engine.open(engine_dir=str(tmp_path), db_url=db_url,
                     agent_factory=lambda *_: None) as engine:
        policy = engine.clusters.get("old")["fencing_policy"]
        assert (policy["power_timeout_s"], policy["soft_fence_grace_s"]) == (60.0, 5.0)
        # An existing cluster keeps migrating as it did; the default is for new ones.
        assert engine.clusters.get("old")["migration_encrypted"] is False
        host = engine.hosts.info("h1")[0]
        assert host["power_management"] == {"agent": "fence_ipmilan", "options": {"ip": "x"}}
        assert host["ssh_host_keys"] == []
