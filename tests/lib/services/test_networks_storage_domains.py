"""Logical networks and storage domains: what a NIC or disk may name, and what hosts must have."""

import re

import pytest

from engine_lib.config import EngineConfig
from engine_lib.engine import Engine
from engine_lib.protocol.errors import Conflict, InvalidSpec, NoValidHost

VM = {"name": "vm1", "cluster": "c1", "memory": "256MiB",
      "nics": [{"name": "nic1", "network": "vms"}],
      "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"}]}


def test_network_check_mode_real_run_then_idempotent(engine, cluster):
    predicted = engine.networks.ensure("vms", cluster=cluster, bridge="br-vm", vlan=100,
                                       required=True, check_mode=True)
    assert predicted.changed and predicted.entity["bridge"] == "br-vm"
    assert engine.networks.info(cluster) == []
    real = engine.networks.ensure("vms", cluster=cluster, bridge="br-vm", vlan=100, required=True)
    assert real.changed and real.entity == predicted.entity
    assert real.diff == {"before": {}, "after": real.entity}
    again = engine.networks.ensure("vms", cluster=cluster, bridge="br-vm", vlan=100, required=True)
    assert again.changed is False
    # Unset options keep their value; the bridge defaults to the name.
    assert engine.networks.ensure("vms", cluster=cluster, mtu=9000).entity["vlan"] == 100
    assert engine.networks.ensure("plain", cluster=cluster).entity["bridge"] == "plain"


@pytest.mark.parametrize("kwargs, field", [
    ({"bridge": "a-bridge-name-too-long"}, "bridge"),
    ({"bridge": "br/0"}, "bridge"),
    ({"vlan": 4095}, "vlan"),
    ({"mtu": 12}, "mtu"),
    ({"required": "yes"}, "required"),
])
def test_bad_network_settings_name_the_field_and_change_nothing(engine, cluster, kwargs, field):
    with pytest.raises(InvalidSpec) as err:
        engine.networks.ensure("vms", cluster=cluster, **kwargs)
    assert err.value.details["field"] == field
    assert engine.networks.info(cluster) == []


def test_nics_must_name_a_network_once_the_cluster_defines_any(engine, cluster):
    # No networks yet: the NIC's network is the bridge itself (existing specs keep working).
    legacy = {**VM, "disks": []}
    engine.vms.ensure(legacy)
    assert "<source bridge='vms'/>" in engine.vms.domain_xml("vm1")
    engine.networks.ensure("vms", cluster=cluster, bridge="br-vm")
    engine.vms.ensure(legacy)
    assert "<source bridge='br-vm'/>" in engine.vms.domain_xml("vm1")
    with pytest.raises(InvalidSpec) as err:
        engine.vms.ensure({**legacy, "nics": [{"name": "nic1", "network": "other"}]})
    assert err.value.details["field"] == "nics[0].network"
    assert "networks: vms" in err.value.message
    # Changing the bridge moves the NICs; removing a network in use is refused.
    engine.networks.ensure("vms", cluster=cluster, bridge="br-new")
    assert "<source bridge='br-new'/>" in engine.vms.domain_xml("vm1")
    with pytest.raises(Conflict, match="vm1"):
        engine.networks.remove("vms", cluster=cluster)
    engine.vms.ensure({"name": "vm1"}, state="absent")
    assert engine.networks.remove("vms", cluster=cluster, check_mode=True).changed
    assert engine.networks.remove("vms", cluster=cluster).changed
    assert engine.networks.remove("vms", cluster=cluster).changed is False


def test_a_host_without_a_required_network_is_not_chosen(engine, cluster, agents):
    from conftest import FakeAgent

    for name, address, bridges in (("h1", "10.0.0.1", ["br-vm"]), ("h2", "10.0.0.2", [])):
        agent = agents[address] = FakeAgent(name, memory_mib=8192 if name == "h2" else 4096)
        info = agent.host_info
        agent.host_info = lambda info=info, bridges=bridges: {**info(), "networks": bridges}
        engine.hosts.ensure(name, address=address, cluster=cluster)
    engine.networks.ensure("vms", cluster=cluster, bridge="br-vm", required=True)
    spec = {"name": "nonic", "cluster": cluster, "memory": "256MiB"}
    # h2 has more free memory but lacks the required network's bridge.
    assert engine.vms.ensure(spec, state="running").entity["host"] == "h1"
    engine.vms.ensure(spec, state="stopped")
    agents["10.0.0.1"].host_info = lambda: {"hostname": "h1", "cpus": 4, "memory_mib": 4096,
                                            "networks": []}
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    with pytest.raises(NoValidHost, match="br-vm"):
        engine.vms.ensure(spec, state="running")


def test_storage_domain_lifecycle_and_host_availability(engine, cluster, agents):
    from conftest import FakeAgent

    agent = agents["10.0.0.1"] = FakeAgent("h1")
    agent.host_info = lambda: {"hostname": "h1", "cpus": 4, "memory_mib": 4096, "storage_domains": [
        {"name": "data", "path": "/srv/data", "available": True, "free_mib": 10, "total_mib": 20}]}
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    predicted = engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster],
                                              check_mode=True)
    assert predicted.changed and engine.storage_domains.info() == []
    real = engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    assert real.entity == predicted.entity
    assert real.entity["hosts"]["h1"] == {"available": True, "path": "/srv/data",
                                          "free_mib": 10, "total_mib": 20}
    assert engine.storage_domains.ensure("data", path="/srv/data/", clusters=[cluster]).changed is False
    other = engine.storage_domains.ensure("iso", path="/srv/iso", clusters=[cluster]).entity
    assert other["hosts"]["h1"] == {"available": False, "reason": "not configured on the host's agent"}


@pytest.mark.parametrize("kwargs, field", [
    ({"path": "relative/dir"}, "path"),
    ({"path": "/srv/../etc"}, "path"),
    ({"type": "nfs", "path": "/var/lib/kestrel/mnt/x"}, "export"),
    ({"type": "nfs", "path": "/var/lib/kestrel/mnt/x", "export": "no-colon"}, "export"),
    ({"type": "iscsi", "path": "/var/lib/kestrel/mnt/x"}, "type"),
    ({}, "path"),
    # File domains only under what engine.conf allows (/srv here); nfs only at the mount root.
    ({"path": "/etc/cron.d"}, "path"),
    ({"path": "/srvx/data"}, "path"),
    ({"path": "/"}, "path"),
    ({"type": "nfs", "export": "nas:/x", "path": "/etc/kestrel/hooks"}, "path"),
    ({"type": "nfs", "export": "nas:/x", "path": "/var/lib/kestrel/mnt/a/b"}, "path"),
    ({"type": "nfs", "export": "nas:/x", "path": "/srv/data"}, "path"),
])
def test_bad_storage_domains_are_refused(engine, cluster, kwargs, field):
    with pytest.raises(InvalidSpec) as err:
        engine.storage_domains.ensure("data", clusters=[cluster], **kwargs)
    assert err.value.details["field"] == field
    assert engine.storage_domains.info() == []


def test_disks_must_use_an_attached_domain_once_the_cluster_has_any(engine, cluster):
    engine.vms.ensure({**VM, "nics": []})  # none attached: any name goes
    engine.storage_domains.ensure("nfs1", type="nfs", export="nas:/exports/k",
                                  path="/var/lib/kestrel/mnt/nfs1", clusters=[cluster])
    with pytest.raises(InvalidSpec) as err:
        engine.vms.ensure({**VM, "name": "vm2", "nics": []})
    assert err.value.details["field"] == "disks[0].storage_domain"
    assert "attached: nfs1" in err.value.message
    engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    assert engine.vms.ensure({**VM, "name": "vm2", "nics": []}).changed
    # A domain with disks of the cluster's VMs stays attached and stays.
    with pytest.raises(Conflict, match="vm1, vm2"):
        engine.storage_domains.ensure("data", clusters=[])
    with pytest.raises(Conflict, match="vm1, vm2"):
        engine.storage_domains.remove("data")
    with pytest.raises(InvalidSpec, match="type cannot change"):
        engine.storage_domains.ensure("nfs1", type="file")


def test_removing_a_cluster_takes_its_networks_and_attachments_along(engine, cluster):
    engine.networks.ensure("vms", cluster=cluster)
    engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    assert engine.clusters.remove(cluster).changed
    assert engine.storage_domains.info("data")[0]["clusters"] == []
    engine.clusters.ensure(cluster)
    assert engine.networks.info(cluster) == []


def test_an_nfs_domain_is_mounted_at_the_mount_root_by_default(engine, cluster):
    domain = engine.storage_domains.ensure("nfs1", type="nfs", export="nas:/k",
                                           clusters=[cluster]).entity
    assert domain["path"] == "/var/lib/kestrel/mnt/nfs1"


def test_a_stored_path_outside_the_allowed_roots_is_refused_on_the_next_change(engine, cluster,
                                                                             tmp_path):
    engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    narrowed = Engine(EngineConfig(tmp_path, "unused", ("/var/lib/kestrel/storage",)),
                      engine.store, engine.agent)
    with pytest.raises(InvalidSpec, match="not under a directory the administrator allowed"):
        narrowed.storage_domains.ensure("data", description="x")
    assert narrowed.storage_domains.ensure(
        "data", path="/var/lib/kestrel/storage/data").entity["path"] == \
        "/var/lib/kestrel/storage/data"


def test_engine_conf_sets_the_allowed_roots(tmp_path):
    assert EngineConfig.resolve(str(tmp_path), "sqlite://").file_domain_roots == \
        ("/var/lib/kestrel/storage",)
    (tmp_path / "engine.conf").write_text("[storage]\nfile_domain_roots = /srv/a  /data/b/\n")
    assert EngineConfig.resolve(str(tmp_path), "sqlite://").file_domain_roots == \
        ("/srv/a", "/data/b")
    for text, where in [("[storage]\nfile_domain_roots = relative\n", "file_domain_roots"),
                        ("[storage]\nfile_domain_roots = /\n", "file_domain_roots"),
                        ("[storage]\nroots = /srv\n", "[storage] roots"),
                        ("[other]\n", "[other]")]:
        (tmp_path / "engine.conf").write_text(text)
        with pytest.raises(InvalidSpec, match=re.escape(where)):
            EngineConfig.resolve(str(tmp_path), "sqlite://")
