"""event_info, stats_info and affinity_group through a real ansible-playbook."""

from datetime import UTC, datetime, timedelta

from engine_lib.model import Vm
from engine_lib.services import stats_history
from engine_lib.services.common import find


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


def test_stats_info_reads_history_and_names_bad_options(playbook, engine):
    engine.clusters.ensure("c1")
    engine.vms.ensure({"name": "vm1", "cluster": "c1", "memory": "128MiB"}, state="stopped")
    with engine.store.transaction() as session:
        vm_id = find(session, Vm, "vm1").id
        stats_history.record_minute(session, "vm", [{"object_id": vm_id, "cpu_percent": 55.0}],
                                    datetime.now(UTC) - timedelta(minutes=10))
    results = playbook.run([
        {"kestrel.virt.stats_info": {"vm": "vm1", "period": "1h"}, "check_mode": True},
        {"kestrel.virt.stats_info": {"vm": "vm1", "period": "fortnight"}},
        {"kestrel.virt.stats_info": {"host": "h9"}},
    ])
    window, bad, unknown = results
    assert not window["changed"] and window["statistics"]["resolution"] == "raw"
    assert [s["cpu_percent"] for s in window["statistics"]["samples"]] == [55.0]
    assert bad["failed"] and bad["msg"].startswith("period: must be a number and a unit")
    assert unknown["failed"] and unknown["msg"] == "host 'h9' does not exist"
