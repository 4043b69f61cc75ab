"""The engine loop's assembly: the Monitor's after-cycle passes, balancing and HA switches."""

import threading

import pytest

from engine_lib.loop import runner
from engine_lib.loop.monitoring import Intervals


@pytest.fixture
def monitor_seen(monkeypatch):
    seen = {}

    def run(self, stop):
        seen["intervals"] = self.intervals
        seen["passes"] = [after.__qualname__ for after in self.after_cycle]

    monkeypatch.setattr(runner.Monitor, "run", run)
    return seen


def test_the_monitor_settles_migrations_then_runs_ha_after_every_cycle(engine, monitor_seen):
    stop = threading.Event()
    stop.set()
    runner.run(engine, runner.Settings(Intervals(host_s=0.5), balance_interval_s=0), stop)
    assert monitor_seen["passes"] == ["MigrationService.active", "HighAvailability.cycle"]
    assert monitor_seen["intervals"] == Intervals(host_s=0.5)


def test_without_ha_only_migrations_are_settled(engine, monitor_seen):
    stop = threading.Event()
    stop.set()
    runner.run(engine, runner.Settings(ha=False, balance_interval_s=0), stop)
    assert monitor_seen["passes"] == ["MigrationService.active"]
