"""The agent's event stream: numbering, long polling, restarts and lost events."""

import threading
import time

from engine_lib.agent.api import Api
from engine_lib.agent.event_stream import EventLog
from engine_lib.agent.registry import STOPPED, Registry
from engine_lib.agent.states import VmStatus

VM = "6a1d2d9e-0b7e-4a57-9d54-5b1c6c1f0a01"


def test_events_after_a_sequence_number_are_returned_in_order():
    log = EventLog()
    log.append(VM, "vm1", "WaitForLaunch", None)
    log.append(VM, "vm1", "Up", None)
    answer = log.after(1)
    assert [(e["seq"], e["status"]) for e in answer["events"]] == [(2, "Up")]
    assert answer["seq"] == 2 and answer["gap"] is False
    assert answer["instance"] == log.instance


def test_a_long_poll_returns_as_soon_as_a_change_arrives():
    log = EventLog()
    threading.Timer(0.2, log.append, (VM, "vm1", "Down", "user shutdown")).start()
    started = time.monotonic()
    answer = log.after(0, timeout=10)
    waited = time.monotonic() - started
    assert 0.1 < waited < 5
    assert answer["events"][0]["exit_reason"] == "user shutdown"


def test_a_long_poll_without_changes_ends_empty_at_its_timeout():
    log = EventLog()
    log.append(VM, "vm1", "Up", None)
    started = time.monotonic()
    answer = log.after(1, timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert answer["events"] == [] and answer["seq"] == 1


def test_a_number_from_an_earlier_agent_process_gets_everything_and_a_gap():
    log = EventLog()
    log.append(VM, "vm1", "Up", None)
    answer = log.after(57, timeout=10)  # answered at once, not after the timeout
    assert answer["gap"] is True and [e["seq"] for e in answer["events"]] == [1]
    assert EventLog().instance != log.instance


def test_events_no_longer_kept_are_reported_as_a_gap():
    log = EventLog(capacity=2)
    for status in ("WaitForLaunch", "Up", "Paused"):
        log.append(VM, "vm1", status, None)
    answer = log.after(0)
    assert answer["gap"] is True
    assert [e["status"] for e in answer["events"]] == ["Up", "Paused"]
    assert log.after(1)["gap"] is False  # 2 and 3 are still here


def test_the_registry_logs_each_change_once_in_order():
    log = EventLog()
    reg = Registry(listener=lambda r: log.append(r.id, r.name, r.status.value, r.exit_reason))
    reg.set(VM, "vm1", VmStatus.WAIT_FOR_LAUNCH)
    reg.set(VM, "vm1", VmStatus.UP)
    reg.set(VM, "vm1", VmStatus.UP)  # a re-read: no change, no event
    reg.request_shutdown(VM, True)
    reg.on_event(VM, STOPPED, 0)
    reg.on_event(VM, STOPPED, 2)  # the first word on why it stopped stays
    assert [(e["status"], e["exit_reason"]) for e in log.after(0)["events"]] == [
        ("WaitForLaunch", None), ("Up", None), ("PoweringDown", None), ("Down", "shutdown")]


class _Hypervisor:
    def __init__(self):
        self.log = EventLog()

    def events_after(self, seq, timeout):
        return self.log.after(seq, timeout)


def test_the_events_route_validates_after_and_timeout(tmp_path):
    api = Api(config=None, hypervisor_factory=lambda _config: _Hypervisor())
    api.hypervisor.log.append(VM, "vm1", "Up", None)
    status, doc = api.handle("GET", "/api/v1/events", {"after": ["0"], "timeout": ["0"]}, b"")
    assert status == 200 and doc["events"][0]["vm_id"] == VM
    status, doc = api.handle("GET", "/api/v1/events", {"after": ["-1"]}, b"")
    assert status == 400 and doc["error"]["details"]["field"] == "after"
    status, doc = api.handle("GET", "/api/v1/events", {"timeout": ["600"]}, b"")
    assert status == 400 and "from 0 to 60" in doc["error"]["message"]
