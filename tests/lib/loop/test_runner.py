"""The engine loop's assembly: which passes run in threads of their own, and the switches."""

import threading

import pytest

from engine_lib.loop import runner
from engine_lib.loop.monitoring import Intervals
from engine_lib.services import actor


@pytest.fixture
def started(monkeypatch):
    """What ``runner.run`` starts: the Monitor's intervals, and each pass run every so
    often: (its thread, interval, what)."""
    seen = {"every": set()}

    def run(self, stop):
        seen["intervals"] = self.intervals

    def every(interval_s, work, stop):
        seen["every"].add((threading.current_thread().name, interval_s, work.__qualname__))

    monkeypatch.setattr(runner.Monitor, "run", run)
    monkeypatch.setattr(runner, "every", every)
    return seen


def _run(engine, settings):
    stop = threading.Event()
    stop.set()
    runner.run(engine, settings, stop)
    for thread in threading.enumerate():
        if thread.name in ("migrations", "ha", "volumes", "ha-reservation", "stats-rollup",
                           "power-saving", "snapshots", "snapshot-merges", "snapshot-copies",
                           "backups"):
            thread.join(10)


def test_migrations_and_ha_run_beside_the_monitor_at_the_host_interval(engine, started):
    _run(engine, runner.Settings(Intervals(host_s=0.5), balance_interval_s=0))
    assert started["intervals"] == Intervals(host_s=0.5)
    assert started["every"] == {("migrations", 0.5, "MigrationService.active"),
                                ("volumes", 0.5, "ImageService.reconcile"),
                                ("snapshot-merges", 0.5, "SnapshotMerges.reconcile"),
                                ("backups", 0.5, "BackupService.reconcile"),
                                ("snapshots", 0.5, "SnapshotReconcile.cycle"),
                                ("snapshot-copies", 0.5, "CopyReconcile.cycle"),
                                ("power-saving", 60.0, "PowerSaving.cycle"),
                                ("ha", 0.5, "HighAvailability.cycle"),
                                ("ha-reservation", 60.0, "ReservationCheck.cycle"),
                                ("stats-rollup", 3600.0, "StatsRollup.cycle")}


def test_without_ha_no_fencing_pass_runs(engine, started):
    _run(engine, runner.Settings(ha=False, balance_interval_s=0, power_saving_interval_s=0))
    assert started["every"] == {("migrations", 3.0, "MigrationService.active"),
                                ("volumes", 3.0, "ImageService.reconcile"),
                                ("snapshot-merges", 3.0, "SnapshotMerges.reconcile"),
                                ("backups", 3.0, "BackupService.reconcile"),
                                ("snapshots", 3.0, "SnapshotReconcile.cycle"),
                                ("snapshot-copies", 3.0, "CopyReconcile.cycle"),
                                ("ha-reservation", 60.0, "ReservationCheck.cycle"),
                                ("stats-rollup", 3600.0, "StatsRollup.cycle")}


def test_the_loop_and_the_threads_it_starts_act_as_the_engine(engine, monkeypatch):
    """Whoever calls it, the loop's events say "engine"; once it returns, the process
    acts as before."""
    seen = {}

    def run(self, stop):
        seen["monitor"] = actor.current().name
        thread = threading.Thread(target=lambda: seen.update(host=actor.current().name))
        thread.start()
        thread.join()

    monkeypatch.setattr(runner.Monitor, "run", run)
    monkeypatch.setattr(runner, "every", lambda interval_s, work, stop: None)
    caller = actor.Actor("alice", user_id="u1", token_id="t1")
    with actor.acting_as(caller):
        _run(engine, runner.Settings(balance_interval_s=0))
        assert actor.current() == caller
    assert seen == {"monitor": "engine", "host": "engine"}
    after = threading.Thread(target=lambda: seen.update(after=actor.current().name))
    after.start()
    after.join()
    assert seen["after"].startswith("local:")
