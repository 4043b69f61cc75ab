"""Custom properties: only what the cluster's administrator allows reaches a host's hooks."""

import pytest

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.custom_properties import normalize_allowed

SAP = {"name": "sap", "cluster": "c1", "memory": 256,
       "custom_properties": {"sap_agent": "true"}}


@pytest.fixture
def host(engine, cluster):
    engine.hosts.ensure("h1", address="10.0.3.1", cluster=cluster)
    return cluster


@pytest.mark.parametrize(("allowed", "field", "reason"), [
    ({"BASH_ENV": ".*"}, "custom_properties.BASH_ENV", "lowercase letters"),
    ({"x" * 65: ".*"}, "custom_properties." + "x" * 65, "1-64"),
    ({"1x": ".*"}, "custom_properties.1x", "starting with a letter"),
    ({"sap_agent": "(true"}, "custom_properties.sap_agent", "not a valid regular expression"),
    ({"sap_agent": "a" * 1025}, "custom_properties.sap_agent", "longer than 1024"),
    ({"sap_agent": True}, "custom_properties.sap_agent", "must be a string"),
    (["sap_agent"], "custom_properties", "mapping of property names"),
])
def test_a_bad_allow_list_names_the_field(allowed, field, reason):
    with pytest.raises(InvalidSpec) as err:
        normalize_allowed("custom_properties", allowed)
    assert err.value.field == field and reason in err.value.reason


def test_the_cluster_keeps_its_allow_list(engine, cluster):
    assert engine.clusters.get(cluster)["custom_properties"] == {}
    changed = engine.clusters.ensure(cluster, custom_properties={"sap_agent": "true|false"})
    assert changed.changed and changed.entity["custom_properties"] == {"sap_agent": "true|false"}
    assert not engine.clusters.ensure(cluster, custom_properties={"sap_agent": "true|false"}).changed
    with pytest.raises(InvalidSpec, match=r"custom_properties.sap_agent: is not a valid regular"):
        engine.clusters.ensure(cluster, custom_properties={"sap_agent": "[a-"})
    assert engine.clusters.get(cluster)["custom_properties"] == {"sap_agent": "true|false"}


def test_a_vm_sets_only_allowed_properties_with_matching_values(engine, host):
    with pytest.raises(InvalidSpec) as err:
        engine.vms.ensure(SAP)
    assert err.value.field == "custom_properties.sap_agent"
    assert "is not allowed in cluster 'c1' (it allows: none)" in err.value.reason
    assert engine.vms.info("sap") == []  # nothing stored

    engine.clusters.ensure(host, custom_properties={"sap_agent": "true|false"})
    with pytest.raises(InvalidSpec, match=r"custom_properties.sap_agent: value 'truest' does "
                                          r"not match 'true\|false', the pattern cluster 'c1'"):
        engine.vms.ensure({**SAP, "custom_properties": {"sap_agent": "truest"}})
    with pytest.raises(InvalidSpec, match="custom_properties.BASH_ENV: names are 1-64 lowercase"):
        engine.vms.ensure({**SAP, "custom_properties": {"sap_agent": "true", "BASH_ENV": "/x"}})
    assert engine.vms.ensure(SAP, state="running").entity["status"] == "Up"


def test_a_vm_no_longer_allowed_does_not_start_but_can_stop_and_change(engine, host, agents):
    engine.clusters.ensure(host, custom_properties={"sap_agent": "true|false"})
    engine.vms.ensure(SAP, state="running")
    engine.vms.ensure(SAP, state="stopped")
    engine.clusters.ensure(host, custom_properties={"sap_agent": "false"})
    # The full spec again, and a change of something else: neither touches the properties.
    assert not engine.vms.ensure(SAP, state="stopped").changed
    assert engine.vms.ensure({"name": "sap", "memory": 512}).changed

    before = dict(agents["10.0.3.1"].vms)
    with pytest.raises(InvalidSpec) as err:
        engine.vms.ensure({"name": "sap"}, state="running")
    assert err.value.field == "custom_properties.sap_agent"
    assert "VM 'sap' does not start until the property is removed" in err.value.reason
    assert agents["10.0.3.1"].vms == before  # no host was asked
    assert engine.vms.info("sap")[0]["status"] == "Down"

    engine.vms.ensure({"name": "sap", "custom_properties": {}}, state="running")
    assert engine.vms.info("sap")[0]["status"] == "Up"
