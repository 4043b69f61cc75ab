"""The engine's event follower: applying an agent's status changes to the database."""

import pytest

from engine_lib.loop.event_follower import EventFollower, HostFollower, latest_per_vm
from engine_lib.services.host_records import HostRef


@pytest.fixture
def running(engine, cluster):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    vm = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256,
                            "placement": {"hosts": ["h1"]}}, state="running")
    return vm.entity["id"]


def follower(engine, host="h1"):
    return HostFollower(engine, HostRef(host, f"10.0.0.{host[1]}", 54321))


def event(seq, vm_id, status, exit_reason=None):
    return {"seq": seq, "vm_id": vm_id, "name": "vm1", "status": status,
            "exit_reason": exit_reason, "time": 0.0}


def vm1(engine):
    return engine.vms.info("vm1")[0]


def test_a_guest_that_powered_off_is_down_with_the_agents_reason(engine, running, agents):
    f = follower(engine)
    f.handle({"instance": "a", "seq": 1, "gap": False, "events": [event(1, running, "Up")]})
    assert vm1(engine)["status"] == "Up"
    f.handle({"instance": "a", "seq": 3, "gap": False,
              "events": [event(2, running, "PoweringDown"),
                         event(3, running, "Down", "user shutdown")]})
    vm = vm1(engine)
    assert (vm["status"], vm["exit_reason"], vm["host"]) == ("Down", "user shutdown", None)
    assert running not in agents["10.0.0.1"].vms  # removed from the host, as a stop does
    messages = [e["message"] for e in engine.events.info(entity_name="vm1")]
    assert any("PoweringDown" in m for m in messages)
    assert any("Down: user shutdown" in m for m in messages)
    assert (f.instance, f.seq) == ("a", 3)


def test_a_first_answer_applies_only_each_vms_latest_status(engine, running):
    # History: an earlier run went Down, then the VM was started again here.
    f = follower(engine)
    f.handle({"instance": "a", "seq": 4, "gap": False,
              "events": [event(1, running, "Up"), event(2, running, "Down", "user shutdown"),
                         event(3, running, "WaitForLaunch"), event(4, running, "Paused")]})
    vm = vm1(engine)
    assert (vm["status"], vm["host"]) == ("Paused", "h1")


def test_an_agent_restart_makes_the_follower_ask_again_from_the_start(engine, running):
    f = follower(engine)
    f.handle({"instance": "a", "seq": 9, "gap": False, "events": []})
    f.handle({"instance": "b", "seq": 12, "gap": False,
              "events": [event(10, running, "Down", "destroyed")]})
    assert vm1(engine)["status"] == "Up"  # numbers of another process: not applied
    assert (f.instance, f.seq) == (None, 0)
    f.handle({"instance": "b", "seq": 1, "gap": False, "events": [event(1, running, "Paused")]})
    assert vm1(engine)["status"] == "Paused"


def test_an_incoming_status_applied_after_the_switch_is_history(engine, running):
    # Fetched from h1 while the VM came in there, applied once the engine runs it there.
    f = follower(engine)
    f.handle({"instance": "a", "seq": 1, "gap": False,
              "events": [event(1, running, "MigratingTo")]})
    assert vm1(engine)["status"] == "Up"
    assert not any("MigratingTo" in e["message"]
                   for e in engine.events.info(entity_name="vm1"))


def test_events_of_another_hosts_vm_change_nothing(engine, running):
    follower(engine, "h2").handle({"instance": "x", "seq": 1, "gap": False,
                                   "events": [event(1, running, "Down", "migrated")]})
    vm = vm1(engine)
    assert (vm["status"], vm["host"]) == ("Up", "h1")


def test_latest_per_vm_keeps_stream_order():
    events = [event(1, "a", "Up"), event(2, "b", "Up"), event(3, "a", "Down", "crashed")]
    assert [e["seq"] for e in latest_per_vm(events)] == [2, 3]


def test_the_follower_runs_one_thread_per_up_host(engine, running, agents):
    agents["10.0.0.1"].events = lambda after, timeout: {"instance": "a", "seq": 0,
                                                        "gap": False, "events": []}
    agents["10.0.0.2"].events = agents["10.0.0.1"].events
    ef = EventFollower(engine, poll_timeout=0)
    try:
        ef.sync_hosts()
        assert sorted(ref.name for ref in ef._followers) == ["h1", "h2"]
    finally:
        ef.stop_all()
    assert ef._followers == {}
