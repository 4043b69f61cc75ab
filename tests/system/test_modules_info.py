"""event_info and affinity_group through a real ansible-playbook."""


def test_event_info_reads_what_the_engine_did(playbook):
    results = playbook.run([
        {"kestrel.virt.cluster": {"name": "c1"}},
        {"kestrel.virt.cluster": {"name": "c1", "memory_overcommit": 200}},
        {"kestrel.virt.event_info": {"entity_type": "cluster", "entity_name": "c1"}},
        {"kestrel.virt.event_info": {"entity_type": "cluster", "limit": 1}},
    ])
    everything, newest = results[2]["events"], results[3]["events"]
    assert [e["message"] for e in everything] == [
        "cluster created", "cluster updated: memory_overcommit"]
    assert newest == everything[-1:]
    assert not results[2]["changed"]


def test_affinity_group_in_three_beats(playbook):
    task = {"kestrel.virt.affinity_group": {"name": "apart", "cluster": "c1",
                                            "vm_rule": "negative"}}
    results = playbook.run([{"kestrel.virt.cluster": {"name": "c1"}},
                            {**task, "check_mode": True}, task, {**task, "check_mode": True}])
    check, real, again = results[1:]
    assert check["changed"] and real["changed"] and not again["changed"]
    assert real["affinity_group"]["vm_rule"] == "negative"
    assert real["affinity_group"]["vm_enforcing"] is True
