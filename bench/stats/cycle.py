"""One VM poll cycle of the engine over every host: Monitor._sync_vms, host after host.

The engine's loop runs each host's check in a thread of its own; here they run one
after the other in this thread, so the process's CPU time is the engine's work for the
cycle and nothing else. The monitor's clock is the bench's: a cycle every 15 s, so one
cycle in four starts a new minute and writes the history rows (at most one per object
per minute), the other three update the current figures only.
"""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime, timedelta

from bench.stats.meters import Cost, RowCounter, measured
from engine_lib.loop import statistics
from engine_lib.loop.monitoring import Monitor
from engine_lib.services import stats_history

INTERVAL = timedelta(seconds=15)


class Clock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class Share:
    """CPU seconds spent inside statistics.record (history included) and inside
    stats_history.record_minute alone, whoever calls them; and the history rows
    record_minute reports (its INSERT ... RETURNING has no rowcount to count)."""

    def __init__(self):
        self.record_s = self.history_s = 0.0
        self.history_rows = 0
        self._wrap(statistics, "record", "record_s")
        self._wrap(stats_history, "record_minute", "history_s")

    def _wrap(self, module, name: str, slot: str) -> None:
        inner = getattr(module, name)

        def timed(*args, **kwargs):
            started = time.process_time()
            try:
                answer = inner(*args, **kwargs)
            finally:
                setattr(self, slot, getattr(self, slot) + time.process_time() - started)
            if name == "record_minute":
                self.history_rows += answer
            return answer

        setattr(module, name, timed)

    def take(self) -> tuple[float, float, int]:
        taken = self.record_s, self.history_s, self.history_rows
        self.record_s = self.history_s = 0.0
        self.history_rows = 0
        return taken


class Poller:
    """Cycles over the fleet's first ``count`` hosts."""

    def __init__(self, engine, agents: list, counter: RowCounter, db_url: str, share: Share):
        self.engine, self.agents, self.counter, self.db_url = engine, agents, counter, db_url
        self.share = share
        self.clock = Clock(datetime(2026, 12, 1, tzinfo=UTC))
        self.monitor = Monitor(engine, clock=self.clock)
        self.refs = self.monitor._hosts()

    def next_minute(self) -> None:
        """Move the clock to the start of the next minute."""
        now = self.clock.now
        self.clock.now = now.replace(second=0, microsecond=0) + timedelta(minutes=1)

    def cycle(self, count: int) -> Cost:
        for agent in self.agents[:count]:
            agent.advance()
        gc.collect()  # the set-up's garbage is not this cycle's
        self.share.take()
        with measured(self.counter, self.db_url) as cost:
            for ref in self.refs[:count]:
                self.monitor._sync_vms(ref)
        cost.record_s, cost.history_s, history_rows = self.share.take()
        if history_rows:
            cost.rows["stats_samples"] += history_rows
        self.clock.now += INTERVAL
        return cost

    def minutes(self, count: int, minutes: int, others: int = 3) -> tuple[list[Cost], list[Cost]]:
        """(cycles opening a minute, ``others`` cycles after each) over ``minutes`` minutes."""
        opening, rest = [], []
        for _ in range(minutes):
            self.next_minute()
            opening.append(self.cycle(count))
            rest += [self.cycle(count) for _ in range(others)]
        return opening, rest
