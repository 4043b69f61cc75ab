"""The engine's VM decisions, with fake agents standing in for hosts."""

import pytest

from engine_lib.protocol.errors import (
    AgentUnreachable,
    ClusterNotFound,
    Conflict,
    InvalidSpec,
    NoValidHost,
)

VM = {"name": "vm1", "cluster": "c1", "memory": "512MiB",
      "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"}],
      "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


@pytest.fixture
def hosts(engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    agents["10.0.0.2"].memory_mib = 8192
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    return agents


def test_running_starts_on_the_host_with_most_free_memory(engine, hosts):
    outcome = engine.vms.ensure(VM, state="running")
    assert outcome.changed
    assert outcome.entity["status"] == "Up" and outcome.entity["host"] == "h2"
    # Weights are normalized to [0, 1] per unit (issue 6): same CPUs, h2 has the most memory left.
    assert outcome.entity["placement"]["weights"] == {"h1": 0.0, "h2": 1.0}
    assert engine.vms.ensure(VM, state="running").changed is False


def test_check_mode_predicts_and_changes_nothing(engine, hosts):
    outcome = engine.vms.ensure(VM, state="running", check_mode=True)
    assert outcome.changed and outcome.entity["status"] == "Up"
    assert engine.vms.info() == []
    assert not any(agent.vms for agent in hosts.values())


def test_stopped_and_absent(engine, hosts):
    engine.vms.ensure(VM, state="running")
    assert engine.vms.ensure(VM, state="stopped", check_mode=True).changed
    stopped = engine.vms.ensure(VM, state="stopped", force=True)
    assert stopped.changed and stopped.entity["status"] == "Down" and stopped.entity["host"] is None
    assert engine.vms.ensure(VM, state="stopped").changed is False
    gone = engine.vms.ensure({"name": "vm1"}, state="absent")
    assert gone.changed and engine.vms.info() == []
    assert len(hosts["10.0.0.1"].deleted_volumes) == 1
    assert engine.vms.ensure({"name": "vm1"}, state="absent").changed is False


def test_a_vm_that_died_behind_the_engines_back_is_started_again(engine, hosts):
    engine.vms.ensure(VM, state="running")
    hosts["10.0.0.2"].vms.clear()
    assert engine.vms.ensure(VM, state="running").changed


def test_an_unreachable_host_is_not_guessed_down(engine, hosts):
    engine.vms.ensure(VM, state="running")
    hosts["10.0.0.2"].reachable = False
    with pytest.raises(AgentUnreachable):
        engine.vms.ensure(VM, state="running")
    assert engine.vms.info("vm1")[0]["status"] == "Up"


def test_no_valid_host_says_why_for_each_host(engine, hosts):
    with pytest.raises(NoValidHost) as info:
        engine.vms.ensure({**VM, "memory": "64GiB"}, state="running")
    assert set(info.value.explanation["filtered"]) == {"h1", "h2"}
    assert "needs 65536 MiB" in info.value.message
    assert engine.vms.info("vm1")[0]["status"] == "Down"


def test_claims_of_running_vms_count_against_memory(engine, hosts):
    hosts["10.0.0.2"].memory_mib = 1024
    engine.hosts.ensure("h2", address="10.0.0.2", cluster="c1")
    hosts["10.0.0.1"].memory_mib = 1024
    engine.hosts.ensure("h1", address="10.0.0.1", cluster="c1")
    for index in range(4):
        engine.vms.ensure({**VM, "name": f"v{index}", "nics": []}, state="running")
    with pytest.raises(NoValidHost, match="512 MiB claimed|1024 MiB claimed"):
        engine.vms.ensure({**VM, "name": "v5", "nics": []}, state="running")


def test_macs_are_unique_in_a_cluster_and_kept(engine, hosts):
    a = engine.vms.ensure(VM, state="present").entity["nics"][0]["mac"]
    b = engine.vms.ensure({**VM, "name": "vm2"}, state="present").entity["nics"][0]["mac"]
    assert a != b
    with pytest.raises(InvalidSpec, match="already used by VM 'vm1'") as info:
        engine.vms.ensure({**VM, "name": "vm3", "nics": [{"name": "n", "network": "x", "mac": a}]},
                          state="present")
    assert info.value.field == "nics[0].mac"


def test_partial_spec_updates_only_what_it_names(engine, hosts):
    engine.vms.ensure(VM, state="present")
    outcome = engine.vms.ensure({"name": "vm1", "memory": "1GiB"}, state="present")
    assert outcome.changed and outcome.entity["memory_mib"] == 1024
    assert [d["name"] for d in outcome.entity["disks"]] == ["root"]
    assert "<memory unit='MiB'>512</memory>" in outcome.diff["before"]
    assert "<memory unit='MiB'>1024</memory>" in outcome.diff["after"]


def test_dropping_a_disk_from_the_spec_is_refused_not_deleted(engine, hosts):
    engine.vms.ensure(VM, state="present")
    with pytest.raises(InvalidSpec, match="would delete its data"):
        engine.vms.ensure({**VM, "disks": []}, state="present")
    assert len(engine.vms.info("vm1")[0]["disks"]) == 1


def test_unknown_cluster_leaves_nothing_behind(engine, hosts):
    with pytest.raises(ClusterNotFound):
        engine.vms.ensure({**VM, "cluster": "nope"}, state="present")
    assert engine.vms.info() == []


def test_unreachable_agent_registers_no_host(engine, cluster, unreachable_agent):
    with pytest.raises(AgentUnreachable):
        engine.hosts.ensure("hx", address=unreachable_agent, cluster=cluster)
    assert engine.hosts.info() == []


def test_a_failed_start_releases_the_claim(engine, hosts):
    hosts["10.0.0.2"].reachable = False
    with pytest.raises(AgentUnreachable):
        engine.vms.ensure(VM, state="running")
    vm = engine.vms.info("vm1")[0]
    assert vm["status"] == "Down" and vm["host"] is None
    assert "start failed on host h2" in vm["exit_reason"]


def test_cluster_with_hosts_cannot_be_removed(engine, hosts):
    with pytest.raises(Conflict, match="still has 2 host"):
        engine.clusters.remove("c1")


def test_diffs_and_the_xml_shown_to_users_mask_the_console_password_and_user_data(engine, hosts):
    secret_vm = {**VM, "graphics": {"type": "vnc", "password": "s3cr3tpw"},
                 "cloud_init": {"user_data": "#cloud-config\npassword: hunter2\n"}}
    created = engine.vms.ensure(secret_vm)
    shown = created.diff["after"] + engine.vms.domain_xml("vm1")
    assert "s3cr3tpw" not in shown and "hunter2" not in shown
    assert "passwd='********'" in created.diff["after"]
    # A new password is still a change, though the diff cannot show which.
    changed = engine.vms.ensure({**secret_vm, "graphics": {"type": "vnc", "password": "0therpw"}})
    assert changed.changed and "0therpw" not in changed.diff["after"]
    for outcome in (engine.vm_devices.nic("vm1", "nic2", settings={"network": "kestrelmgmt"}),
                    engine.vm_devices.disk("vm1", "root", settings={"bootable": True}),
                    engine.vms.ensure({"name": "vm1"}, state="absent")):
        assert "0therpw" not in str(outcome.diff) and "hunter2" not in str(outcome.diff)
