"""MAC addresses are unique across the engine, also when playbooks create VMs at once."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from engine_lib.protocol.errors import InvalidSpec


def _create(engine, cluster, name):
    outcome = engine.vms.ensure({"name": name, "cluster": cluster, "memory": "128MiB",
                                 "nics": [{"name": "nic1", "network": "br0"}]}, state="present")
    return outcome.entity["nics"][0]["mac"]


def test_forty_vms_created_four_at_a_time_get_forty_macs(engine, cluster):
    with ThreadPoolExecutor(max_workers=4) as pool:
        macs = list(pool.map(lambda i: _create(engine, cluster, f"vm{i}"), range(40)))
    assert len(set(macs)) == 40
    stored = [nic["mac"] for vm in engine.vms.info() for nic in vm["nics"]]
    assert sorted(stored) == sorted(macs)


def test_the_database_refuses_a_second_nic_with_the_same_mac(engine, cluster):
    mac = _create(engine, cluster, "vm1")
    _create(engine, cluster, "vm2")
    with pytest.raises(IntegrityError), engine.store.transaction() as session:
        session.execute(text("UPDATE vm_devices SET mac = :mac WHERE mac <> :mac"), {"mac": mac})


def test_clusters_with_the_same_default_pool_never_share_a_mac(engine, cluster):
    engine.clusters.ensure("c2")
    assert _create(engine, cluster, "vm1") != _create(engine, "c2", "vm2")
    mac = engine.vms.info("vm1")[0]["nics"][0]["mac"]
    with pytest.raises(InvalidSpec, match="already used by VM 'vm1'") as info:
        engine.vms.ensure({"name": "vm3", "cluster": "c2", "nics": [
            {"name": "n", "network": "br0", "mac": mac}]}, state="present")
    assert info.value.field == "nics[0].mac"


def test_a_renamed_nic_keeps_its_mac(engine, cluster):
    mac = _create(engine, cluster, "vm1")
    outcome = engine.vms.ensure({"name": "vm1", "nics": [
        {"name": "renamed", "network": "br0", "mac": mac}]}, state="present")
    assert [(n["name"], n["mac"]) for n in outcome.entity["nics"]] == [("renamed", mac)]
