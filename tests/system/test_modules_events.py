"""event_info through a real ansible-playbook: the audit log a user reads."""


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
