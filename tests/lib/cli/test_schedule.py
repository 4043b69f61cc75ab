"""The scheduler inside the engine and behind `kestrel schedule`."""

import json

import pytest

from engine_lib.cli import main
from engine_lib.protocol.errors import InvalidSpec, NoValidHost


def test_cluster_policy_is_set_validated_and_described(engine, cluster):
    outcome = engine.clusters.ensure(cluster, scheduling_policy="power_saving",
                                     scheduling_policy_properties={"low_utilization": 10})
    assert outcome.changed and outcome.entity["scheduling_policy"] == "power_saving"
    assert engine.clusters.ensure(cluster, scheduling_policy="power_saving").changed is False
    described = engine.clusters.scheduling_policies(cluster=cluster)[0]
    assert {p["name"]: p["value"] for p in described["parameters"]}["low_utilization"] == 10
    with pytest.raises(InvalidSpec) as err:
        engine.clusters.ensure(cluster, scheduling_policy_properties={"high_vm_count": 3})
    assert err.value.field == "scheduling_policy_properties.high_vm_count"
    assert len(engine.clusters.scheduling_policies()) == 5


def test_a_start_refused_by_the_policy_carries_the_full_explanation(engine, cluster):
    engine.hosts.ensure("h1", address="10.0.3.1", cluster=cluster)
    engine.clusters.ensure(cluster, scheduling_policy="cluster_maintenance")
    engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": "256MiB"})
    with pytest.raises(NoValidHost) as err:
        engine.vms.ensure({"name": "vm1"}, state="running")
    explanation = err.value.to_dict()["details"]["explanation"]
    assert explanation["policy"] == "cluster_maintenance"
    assert explanation["removed_by"] == {"cluster_maintenance": ["h1"]}
    assert "only highly available VMs may start" in explanation["filtered"]["h1"]
    engine.clusters.ensure(cluster, scheduling_policy="evenly_distributed")
    started = engine.vms.ensure({"name": "vm1"}, state="running")
    assert started.entity["host"] == "h1"
    assert started.entity["placement"]["policy"] == "evenly_distributed"


def test_kestrel_schedule_places_in_order_and_explains(tmp_path, capsys):
    (tmp_path / "hosts.yaml").write_text(
        "- {name: a, cpus: 4, memory: 4GiB, status: up, networks: [data]}\n"
        "- {name: b, cpus: 4, memory: 4GiB, status: non_responsive, networks: [data]}\n"
        "- {name: c, cpus: 4, memory: 2GiB, status: up, networks: [mgmt]}\n")
    (tmp_path / "vms.yaml").write_text(
        "- {name: one, memory: 3GiB, nics: [{name: n, network: data}]}\n"
        "- {name: two, memory: 3GiB, nics: [{name: n, network: data}]}\n"
        "- {name: three, memory: 1GiB, placement: {hosts: [c]}}\n")
    assert main(["schedule", "--hosts", str(tmp_path / "hosts.yaml"), "--vms",
                 str(tmp_path / "vms.yaml"), "--policy", "evenly_distributed"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(p["vm"], p["host"]) for p in out["placements"]] == [("one", "a"), ("two", None),
                                                                ("three", "c")]
    why = out["placements"][1]["explanation"]["filtered"]
    assert why == {"a": "needs 3072 MiB, has 1024 MiB schedulable (4096 MiB at 100% overcommit, "
                        "3072 MiB claimed)",
                   "b": "host status is NonResponsive, not Up",
                   # Filters run cheapest first: memory removes c before its networks are asked.
                   "c": "needs 3072 MiB, has 2048 MiB schedulable (2048 MiB at 100% overcommit, "
                        "0 MiB claimed)"}


def test_kestrel_schedule_names_the_bad_field(tmp_path, capsys):
    (tmp_path / "hosts.yaml").write_text("- {name: a, cpus: 4, memory: -1, status: up, networks: []}\n")
    (tmp_path / "vms.yaml").write_text("[]\n")
    assert main(["schedule", "--hosts", str(tmp_path / "hosts.yaml"),
                 "--vms", str(tmp_path / "vms.yaml")]) == 2
    assert "hosts[0].memory" in capsys.readouterr().err
