"""The engine loop's assembly: which threads run, and what hooks into the Monitor.

``run`` starts, in this order, and returns once ``stop`` is set:

1. the event follower, in a thread of its own: status changes the agents push
   reach the database at once; the Monitor's polls stay the reference (and own
   host status);
2. the balancer, in a thread of its own, unless balancing is off: each cluster's
   balancing policy, a few migrations per round;
3. settling migrations whose caller died (a module run killed mid-way would
   leave its VM MigratingFrom, which the Monitor does not touch), in a thread of
   its own at the host interval;
4. unless HA is off, fencing NonResponsive hosts and restarting their HA VMs
   elsewhere, in a thread of its own at the host interval (each host's fencing
   in a thread of its own again);
5. reconciling volumes left locked by an upload whose agent job is gone (an agent
   restarted, a writer killed), and snapshots left locked by a create, revert or
   copy (a clone or template from it) whose caller died, at start and at the host
   interval;
6. checking the HA reservation of the clusters that keep one, every minute, in a
   thread of its own (it reads only the database);
7. power saving (hosts parked, switched off and back on through their power
   management), in a thread of its own every ``power_saving_interval_s``;
8. the statistics history's rollups and retention, at start and then hourly, in a
   thread of its own;
9. the Monitor, in the caller's thread: heartbeats and VM polls, each host's in
   a thread of its own.

So no pass waits for another, and a host whose agent hangs delays only what
concerns that host: every agent call has a total deadline (engine_lib.broker).

Daemonizing, the pidfile, logging and signals are the caller's (the CLI's).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine_lib.loop import balancer, ha_reservation, snapshot_reconcile, stats_rollup
from engine_lib.loop.event_follower import EventFollower
from engine_lib.loop.ha import HighAvailability
from engine_lib.loop.monitoring import Intervals, Monitor
from engine_lib.loop.power_saving import PowerSaving
from engine_lib.services import actor, snapshot_sources

log = logging.getLogger("kestrel.engine.loop")
# How long a stop waits for each thread's pass in flight (an agent call ends by its deadline).
JOIN_S = 35.0


@dataclass(frozen=True)
class Settings:
    intervals: Intervals = field(default_factory=Intervals)
    # Seconds between balancing rounds; 0 turns balancing off.
    balance_interval_s: float = 60.0
    balance_max_migrations: int = 1  # per cluster per round
    ha: bool = True  # False: no fencing and no HA restarts (monitoring only)
    ssh_key: str | None = None  # for soft fencing; None: the engine's own key
    ha_reservation_interval_s: float = ha_reservation.INTERVAL_S
    # Seconds between power saving rounds (its grace periods are minutes); 0 turns it off.
    power_saving_interval_s: float = 60.0
    stats_rollup_interval_s: float = stats_rollup.INTERVAL_S


def run(engine, settings: Settings, stop: threading.Event) -> None:
    """Run the engine loop on ``engine`` until ``stop`` is set; return once its passes in
    flight have recorded what they did (each bounded by its agent calls' deadlines)."""
    # The loop's threads (and the threads they start) act as "engine"; so does this one,
    # whoever called it.
    with actor.process_default(actor.ENGINE_LOOP), actor.acting_as(actor.ENGINE_LOOP):
        _run(engine, settings, stop)


def _run(engine, settings: Settings, stop: threading.Event) -> None:
    threads = [threading.Thread(target=EventFollower(engine).run, args=(stop,),
                                name="event-follower", daemon=True)]
    if settings.balance_interval_s > 0:
        threads.append(threading.Thread(target=balancer.Balancer(engine, balancer.Settings(
            settings.balance_interval_s, settings.balance_max_migrations)).run, args=(stop,),
            name="balancer", daemon=True))
    host_s = settings.intervals.host_s
    threads.append(threading.Thread(target=every, args=(host_s, engine.migrations.active, stop),
                                    name="migrations", daemon=True))
    threads.append(threading.Thread(target=every, args=(
        host_s, engine.images.reconcile, stop), name="volumes", daemon=True))
    threads.append(threading.Thread(target=every, args=(
        host_s, snapshot_reconcile.SnapshotReconcile(engine).cycle, stop),
        name="snapshots", daemon=True))
    threads.append(threading.Thread(target=every, args=(
        host_s, engine.backups.reconcile, stop), name="backups", daemon=True))
    threads.append(threading.Thread(target=every, args=(
        host_s, engine.snapshot_merge.reconcile, stop), name="snapshot-merges", daemon=True))
    threads.append(threading.Thread(target=every, args=(
        host_s, snapshot_sources.CopyReconcile(engine).cycle, stop),
        name="snapshot-copies", daemon=True))
    threads.append(threading.Thread(target=every, args=(
        settings.ha_reservation_interval_s, ha_reservation.ReservationCheck(engine).cycle,
        stop), name="ha-reservation", daemon=True))
    threads.append(threading.Thread(target=every, args=(
        settings.stats_rollup_interval_s, stats_rollup.StatsRollup(engine).cycle, stop),
        name="stats-rollup", daemon=True))
    if settings.power_saving_interval_s > 0:
        threads.append(threading.Thread(target=every, args=(
            settings.power_saving_interval_s, PowerSaving(engine).cycle, stop),
            name="power-saving", daemon=True))
    if settings.ha:
        # A pass never waits for fencing: what a fence proves is acted on next pass.
        ha = HighAvailability(engine, settings.ssh_key, fence_wait_s=0)
        threads.append(threading.Thread(target=every, args=(host_s, ha.cycle, stop), name="ha",
                                        daemon=True))
    for thread in threads:
        thread.start()
    Monitor(engine, settings.intervals).run(stop)
    for thread in threads:
        thread.join(JOIN_S)


def every(interval_s: float, work: Callable[[], object], stop: threading.Event) -> None:
    """``work()`` every ``interval_s`` until ``stop`` is set; a failure is logged."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            work()
        except Exception:
            log.exception("%s failed", getattr(work, "__qualname__", work))
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
