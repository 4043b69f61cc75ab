"""The engine loop's one VM status rule, fed by the poll and by the event stream alike."""

from types import SimpleNamespace

import pytest

from engine_lib.loop.vm_status import ADOPT, DESTROY, Report, decide, decide_unowned

HOST = SimpleNamespace(id=1, name="h1")


def vm(status, host_id=1, unconfirmed=False, memory_volume=None):
    return SimpleNamespace(status=status, run_on_host_id=host_id,
                           launch_unconfirmed=unconfirmed, memory_volume=memory_volume)


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


# -- a start whose call got no answer: only the host's word settles it ------------------------

@pytest.mark.parametrize("report", [
    Report.polled({"status": "WaitForLaunch"}),  # the agent is still at it (a slow hook)
    Report.pushed({"status": "WaitForLaunch"}),
])
def test_a_vm_its_host_is_still_starting_keeps_waiting_there(report):
    assert decide(vm("WaitForLaunch", unconfirmed=True), HOST, report) is None


def test_a_restore_the_host_is_working_on_is_shown_but_settles_nothing():
    change = decide(vm("WaitForLaunch", unconfirmed=True), HOST,
                    Report.polled({"status": "RestoringState"}))
    assert change.status == "RestoringState" and not change.down


def test_a_vm_whose_timed_out_start_the_host_no_longer_lists_is_down_by_the_hosts_word():
    change = decide(vm("WaitForLaunch", unconfirmed=True), HOST, Report.polled(None))
    assert change.down and change.exit_reason == "host h1 reports no start of it"
    # While the call is in flight the same silence means nothing yet.
    assert decide(vm("WaitForLaunch"), HOST, Report.polled(None)) is None


def test_a_restore_the_host_answers_down_for_leaves_the_vm_suspended():
    saved = {"domain": "data", "image": "i", "volume": "v"}
    change = decide(vm("RestoringState", unconfirmed=True, memory_volume=saved), HOST,
                    Report.polled({"status": "Down", "exit_reason": "failed"}))
    assert change.status == "Suspended" and change.remove_from_host


def test_apply_releases_the_claim_only_on_the_hosts_confirmation():
    from engine_lib.loop.vm_status import apply

    class Session:
        def add(self, entry):
            pass

    row = vm("WaitForLaunch", unconfirmed=True, memory_volume={"volume": "v"})
    row.name, row.run_on_host, row.exit_reason = "vm1", HOST, ""
    apply(Session(), row, decide(row, HOST, Report.polled({"status": "RestoringState"})))
    assert (row.status, row.launch_unconfirmed, row.run_on_host) == \
        ("RestoringState", True, HOST)  # still waiting: the claim stays
    apply(Session(), row, decide(row, HOST, Report.pushed({"status": "Up"})))
    assert (row.status, row.launch_unconfirmed, row.memory_volume) == ("Up", False, None)


# -- running domains the engine does not run on that host ---------------------------------------

@pytest.mark.parametrize("row, status, action", [
    (vm("Down", host_id=None), "Up", ADOPT),  # the engine runs it nowhere: the only copy
    (vm("Down", host_id=None), "Paused", ADOPT),
    (vm("Up", host_id=2), "Up", DESTROY),  # it runs where the engine placed it: a stray
    (vm("Paused", host_id=2), "Up", DESTROY),
    (vm("WaitForLaunch", host_id=2), "Up", None),  # not confirmed there yet
    (vm("Unknown", host_id=2), "Up", None),  # that host may still run it
    (vm("MigratingFrom", host_id=2), "Up", None),  # the migration's to settle
    (vm("Up", host_id=2), "MigratingTo", None),  # an incoming copy
    (vm("Down", host_id=None), "Down", None),  # not running here
    (vm("Down", host_id=None), "WaitForLaunch", None),  # being started here: later
    (vm("Suspended", host_id=None), "Up", None),  # its saved memory: the operator's call
    (None, "Up", None),  # a VM this database does not know
])
def test_what_becomes_of_a_running_domain_the_engine_does_not_run_there(row, status, action):
    assert decide_unowned(row, HOST, {"status": status}) == action
