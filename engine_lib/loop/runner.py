"""The engine loop's assembly: which threads run, and what hooks into the Monitor.

``run`` starts, in this order, and returns once ``stop`` is set:

1. the event follower, in a thread of its own: status changes the agents push
   reach the database at once; the Monitor's polls stay the reference (and own
   host status);
2. the balancer, in a thread of its own, unless balancing is off: each cluster's
   balancing policy, a few migrations per round;
3. the Monitor, in the caller's thread, with its after-cycle passes: settling
   migrations whose caller died (a module run killed mid-way would leave its VM
   MigratingFrom, which the Monitor does not touch), then fencing NonResponsive
   hosts and restarting their HA VMs elsewhere, unless HA is off.

Daemonizing, the pidfile, logging and signals are the caller's (the CLI's).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from engine_lib.loop import balancer
from engine_lib.loop.event_follower import EventFollower
from engine_lib.loop.ha import HighAvailability
from engine_lib.loop.monitoring import Intervals, Monitor


@dataclass(frozen=True)
class Settings:
    intervals: Intervals = field(default_factory=Intervals)
    # Seconds between balancing rounds; 0 turns balancing off.
    balance_interval_s: float = 60.0
    balance_max_migrations: int = 1  # per cluster per round
    ha: bool = True  # False: no fencing and no HA restarts (monitoring only)
    ssh_key: str | None = None  # for soft fencing; None: the engine's own key


def run(engine, settings: Settings, stop: threading.Event) -> None:
    """Run the engine loop on ``engine`` until ``stop`` is set."""
    follower = threading.Thread(target=EventFollower(engine).run, args=(stop,),
                                name="event-follower", daemon=True)
    follower.start()
    if settings.balance_interval_s > 0:
        threading.Thread(target=balancer.Balancer(engine, balancer.Settings(
            settings.balance_interval_s, settings.balance_max_migrations)).run, args=(stop,),
            name="balancer", daemon=True).start()
    monitor = Monitor(engine, settings.intervals)
    monitor.after_cycle.append(engine.migrations.active)
    if settings.ha:
        monitor.after_cycle.append(HighAvailability(engine, settings.ssh_key).cycle)
    monitor.run(stop)
    follower.join(5)
