"""Alembic upgrades an engine database from the first schema, keeping its data."""

from sqlalchemy import text

from engine_lib.engine import Engine
from engine_lib.store import Store, upgrade


def test_upgrade_from_the_first_schema_keeps_clusters_hosts_and_vms(db_url, tmp_path, agents):
    store = Store(db_url)
    upgrade(store.engine, "0001")
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO clusters (id, name, description, virt_type, memory_overcommit_percent, "
            "mac_pool, version) VALUES ('c-1', 'old', '', 'qemu', 150, '[]', 1)"))
        conn.execute(text(
            "INSERT INTO hosts (id, name, cluster_id, address, port, status, hostname, host_uuid, "
            "cpus, memory_mib, libvirt_version, version) VALUES ('h-1', 'h1', 'c-1', "
            "'10.0.4.1', 54321, 'Up', 'h1', 'u', 4, 4096, '9.0.0', 1)"))
        conn.execute(text(
            "INSERT INTO vms (id, name, cluster_id, description, memory_mib, sockets, cores, "
            "threads, machine, kernel, initrd, cmdline, custom_properties, status, exit_reason, "
            "created_at, version) VALUES ('v-1', 'vm1', 'c-1', 'kept', 256, 1, 1, 1, 'q35', '', "
            "'', '', '{}', 'Down', '', CURRENT_TIMESTAMP, 1)"))
    store.close()

    with Engine.open(engine_dir=str(tmp_path), db_url=db_url,
                     agent_factory=lambda *_: None) as engine:
        assert engine.clusters.get("old")["memory_overcommit"] == 150
        # 0005: an existing cluster migrates with the default policy, no bandwidth limit.
        assert (engine.clusters.get("old")["migration_policy"],
                engine.clusters.get("old")["migration_bandwidth_mbps"]) == ("minimal_downtime", 0)
        # 0010: an existing cluster keeps migrating over plain qemu+tcp.
        assert engine.clusters.get("old")["migration_encrypted"] is False
        assert engine.hosts.info()[0]["cluster"] == "old"
        vm = engine.vms.info("vm1")[0]
        assert (vm["description"], vm["memory_mib"], vm["cluster"]) == ("kept", 256, "old")
        assert vm["tags"] == [] and engine.networks.info("old") == []  # 0008
        assert vm["guest"]["ips"] == []  # 0006: no guest-agent report yet
        host = engine.hosts.info()[0]  # 0007: no power management, the default soft fence
        assert (host["power_management"], host["soft_fence_command"], host["fence_state"]) == (
            {}, "systemctl restart kestrel-agent", "")
        # 0011: never reinstalled by the engine, so the next reinstall records its build.
        assert (host["agent_version"], host["agent_installed_at"], host["install_error"]) == (
            "", None, "")
        assert engine.clusters.get("old")["fencing_policy"]["enabled"] is True
        assert engine.clusters.get("old")["ballooning"] is False  # 0009: off, as oVirt
        # 0012: no custom property allowed until an administrator lists them.
        assert engine.clusters.get("old")["custom_properties"] == {}
        with engine.store.transaction(commit=False) as session:  # 0004: never matched yet
            assert session.execute(text("SELECT devices_hash FROM vms")).scalar_one() == ""
        # The upgraded VM is a full citizen: it renders and takes new settings.
        assert engine.vms.ensure({"name": "vm1", "memory": "512MiB"}, state="present").changed
        assert "<memory unit='MiB'>512</memory>" in engine.vms.domain_xml("vm1")
