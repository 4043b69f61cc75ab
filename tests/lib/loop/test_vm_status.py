"""The engine loop's one VM status rule, fed by the poll and by the event stream alike."""

from types import SimpleNamespace

import pytest

from engine_lib.loop.vm_status import Report, decide

HOST = SimpleNamespace(id=1, name="h1")


def vm(status, host_id=1):
    return SimpleNamespace(status=status, run_on_host_id=host_id)


@pytest.mark.parametrize("report", [Report.polled({"status": "Down", "exit_reason": "crash"}),
                                    Report.pushed({"status": "Down", "exit_reason": "crash"})])
def test_a_vm_its_host_reports_down_is_down_with_the_hosts_reason_whichever_way(report):
    change = decide(vm("Up"), HOST, report)
    assert (change.status, change.exit_reason, change.remove_from_host) == ("Down", "crash", True)
    assert change.message == "VM is Down: crash"


def test_a_vm_missing_from_its_hosts_list_is_down_and_has_nothing_left_there():
    change = decide(vm("Up"), HOST, Report.polled(None))
    assert (change.status, change.exit_reason) == ("Down", "not running on host h1")
    assert not change.remove_from_host


@pytest.mark.parametrize("row, report", [
    (vm("Up", host_id=2), Report.pushed({"status": "Down"})),  # runs elsewhere now
    (vm("Down"), Report.polled({"status": "Up"})),  # not active
    (vm("WaitForLaunch"), Report.polled(None)),  # the start call is in flight
    (vm("MigratingFrom"), Report.polled({"status": "Down"})),  # engine.migrations settles it
    (vm("Up"), Report.pushed({"status": "MigratingTo"})),  # an incoming copy's old status
    (vm("SavingState"), Report.pushed({"status": "Down"})),  # the suspend call settles it
    (vm("Paused"), Report.pushed({"status": "Paused"})),  # known already
])
def test_what_the_rule_leaves_alone(row, report):
    assert decide(row, HOST, report) is None


def test_the_poll_still_settles_a_suspend_whose_caller_died():
    change = decide(vm("SavingState"), HOST, Report.polled({"status": "Up"}))
    assert (change.status, change.message) == ("Up", "VM is Up (was SavingState)")
