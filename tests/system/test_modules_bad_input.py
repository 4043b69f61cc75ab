"""Modules through a real ansible-playbook: three beats, and bad input that
fails clearly and leaves nothing behind."""


def test_cluster_in_three_beats(playbook):
    task = {"kestrel.virt.cluster": {"name": "c1", "virt_type": "qemu", "memory_overcommit": 150}}
    check, real, again = playbook.run([{**task, "check_mode": True}, task,
                                       {**task, "check_mode": True}])
    assert check["changed"] and real["changed"] and not again["changed"]
    assert real["cluster"]["memory_overcommit"] == 150


def test_vm_without_a_name_is_refused(playbook):
    (result,) = playbook.run([{"kestrel.virt.vm": {"cluster": "c1", "memory": "128MiB"}}])
    assert result["failed"] and "name" in result["msg"]


def test_negative_memory_names_the_field_and_creates_nothing(playbook, engine):
    results = playbook.run([
        {"kestrel.virt.cluster": {"name": "c1"}},
        {"kestrel.virt.vm": {"name": "vm1", "cluster": "c1", "memory": "-128"}},
    ])
    assert results[1]["failed"]
    assert results[1]["msg"] == "memory: must be greater than zero, got '-128'"
    assert results[1]["error"]["code"] == "InvalidSpec"
    assert engine.vms.info() == []


def test_unreachable_agent_is_named_and_no_host_is_registered(playbook, engine):
    results = playbook.run([
        {"kestrel.virt.cluster": {"name": "c1"}},
        # Nothing listens on this loopback port.
        {"kestrel.virt.host": {"name": "ghost", "address": "127.0.0.1", "port": 9, "cluster": "c1"}},
    ])
    assert results[1]["failed"]
    assert results[1]["error"]["code"] == "AgentUnreachable"
    assert "127.0.0.1:9" in results[1]["msg"]
    assert engine.hosts.info() == []
