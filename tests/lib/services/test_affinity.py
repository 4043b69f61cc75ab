"""Affinity groups created through the engine steer real placements."""

import pytest

from engine_lib.protocol.errors import ClusterNotFound, InvalidSpec, NoValidHost


@pytest.fixture
def two_hosts(engine, cluster):
    engine.hosts.ensure("h1", address="10.0.2.1", cluster=cluster)
    engine.hosts.ensure("h2", address="10.0.2.2", cluster=cluster)
    return cluster


def vm(name, *groups):
    return {"name": name, "cluster": "c1", "memory": 256,
            "placement": {"affinity_groups": list(groups)}}


def test_a_negative_enforcing_group_keeps_its_vms_apart(engine, two_hosts):
    created = engine.affinity_groups.ensure("apart", cluster=two_hosts, vm_rule="negative")
    assert created.changed and created.entity["vm_enforcing"] is True
    assert not engine.affinity_groups.ensure("apart", cluster=two_hosts,
                                             vm_rule="negative").changed
    hosts = {engine.vms.ensure(vm(n, "apart"), state="running").entity["host"]
             for n in ("a", "b")}
    assert hosts == {"h1", "h2"}
    with pytest.raises(NoValidHost) as info:
        engine.vms.ensure(vm("c", "apart"), state="running")
    assert "affinity group apart (negative, enforcing)" in info.value.message


def test_a_positive_host_rule_pins_members_to_its_hosts(engine, two_hosts):
    engine.affinity_groups.ensure("on-h1", cluster=two_hosts, host_rule="positive", hosts=["h1"])
    placed = {engine.vms.ensure(vm(n, "on-h1"), state="running").entity["host"]
              for n in ("a", "b", "c")}
    assert placed == {"h1"}


def test_groups_are_validated_and_removable(engine, two_hosts):
    with pytest.raises(InvalidSpec) as info:
        engine.affinity_groups.ensure("g", cluster=two_hosts, hosts=["nope"])
    assert info.value.field == "hosts"
    with pytest.raises(InvalidSpec) as info:
        engine.affinity_groups.ensure("g", cluster=two_hosts, vm_rule="sideways")
    assert info.value.field == "vm_rule"
    with pytest.raises(ClusterNotFound):
        engine.affinity_groups.ensure("g", cluster="nope")
    engine.affinity_groups.ensure("g", cluster=two_hosts, vm_rule="positive")
    assert [g["name"] for g in engine.affinity_groups.info(two_hosts)] == ["g"]
    assert engine.affinity_groups.remove("g", cluster=two_hosts).changed
    assert engine.affinity_groups.info(two_hosts) == []


def test_a_vm_needing_a_hook_runs_only_where_it_is_installed(engine, two_hosts, agents):
    agents["10.0.2.2"].hooks = ["sap_agent"]
    engine.clusters.ensure(two_hosts, custom_properties={"sid": "[A-Z]{3}", "x": r"\d+"})
    for name, address in (("h1", "10.0.2.1"), ("h2", "10.0.2.2")):
        engine.hosts.ensure(name, address=address, cluster=two_hosts)
    spec = {"name": "sap", "cluster": "c1", "memory": 256, "custom_properties": {"sid": "PRD"},
            "placement": {"hooks": ["sap_agent"]}}
    assert engine.vms.ensure(spec, state="running").entity["host"] == "h2"
    # Custom properties alone require nothing: hosts without hooks ignore them.
    plain = {"name": "plain", "cluster": "c1", "memory": 256, "custom_properties": {"x": "1"}}
    assert engine.vms.ensure(plain, state="running").entity["status"] == "Up"
