"""Power saving with power management in the engine loop: which hosts go dark, and when.

For a cluster whose policy is power_saving with
``enable_automatic_host_power_management`` 1 (oVirt's automatic host power
management), once a minute:

- an Up host that runs nothing and is under ``low_utilization`` goes to
  Maintenance when the cluster has more such empty hosts than
  ``hosts_in_reserve`` (the spares kept up for new VMs) — one host per round,
  never the last Up host, never one without power management, never one HA
  reservation needs (its highly available VMs' restart room), and none within
  the policy's CPU duration of a host coming back (the balancer needs that long
  to give it VMs);
- a host parked that way is switched off through its fence agent once
  ``host_power_off_grace_minutes`` have passed;
- when every Up host stayed over ``high_utilization`` for the policy's CPU
  duration, one host is brought back (``engine.power_saving.request_capacity``;
  a VM start no host can take and an HA restart without room ask the same);
- a host switched on is activated as soon as its agent answers.

``plan`` decides from plain values; ``PowerSaving.cycle`` reads the database,
carries the steps out through the power saving service and audits each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from engine_lib.model import Cluster, Host
from engine_lib.protocol.errors import KestrelError
from engine_lib.protocol.statuses import HostStatus, PowerSavingState
from engine_lib.scheduling import Policy, ha_reservation
from engine_lib.services import cluster_facts, stats_history

log = logging.getLogger("kestrel.engine.power_saving")

PARK, POWER_OFF, CAPACITY, FORGET = "park", "power_off", "capacity", "forget"
# A host switched on whose agent has not answered after this long counts as off again.
STARTING_TIMEOUT_S = 900.0
_HELD_BY_ENGINE = frozenset({PowerSavingState.PARKED, PowerSavingState.STOPPING,
                             PowerSavingState.OFF})


@dataclass(frozen=True)
class HostView:
    name: str
    status: str
    vm_count: int
    cpu_percent: float
    power_saving: str
    # Since its power_saving state last changed (inf: never).
    minutes_since: float
    power_management: bool


@dataclass(frozen=True)
class Step:
    action: str
    host: str | None
    reason: str


def enabled(policy: Policy) -> bool:
    return policy.balancer == "power_saving" and \
        policy.param("enable_automatic_host_power_management") == 1


def overloaded(history: Mapping[str, Sequence[float]], up_hosts: Sequence[str],
               minutes: int, high: int) -> bool:
    """Every Up host over ``high`` in each of its last ``minutes`` samples (oldest first)."""
    return bool(up_hosts) and all(
        len(history.get(h, ())) >= minutes and min(list(history[h])[-minutes:]) > high
        for h in up_hosts)


def plan(policy: Policy, hosts: Sequence[HostView], *, overloaded: bool,
         can_spare: Callable[[str], bool]) -> list[Step]:
    """What power saving does next in one cluster."""
    steps = [Step(FORGET, h.name, f"the host is {h.status}, no longer in Maintenance")
             for h in hosts
             if h.power_saving in _HELD_BY_ENGINE and h.status != HostStatus.MAINTENANCE]
    if not enabled(policy):
        return steps
    minutes, high = policy.param("cpu_overcommit_duration_minutes"), \
        policy.param("high_utilization")
    starting = any(h.power_saving == PowerSavingState.STARTING for h in hosts)
    if overloaded:
        if not starting and any(h.power_saving in (PowerSavingState.PARKED, PowerSavingState.OFF)
                                for h in hosts):
            steps.append(Step(CAPACITY, None, f"every Up host over {high}% CPU for "
                                              f"{minutes} min"))
        return steps  # nothing goes dark, a parked host included: it is the first back
    grace = policy.param("host_power_off_grace_minutes")
    steps += [Step(POWER_OFF, h.name, f"parked for {grace} min of grace" if h.power_saving ==
                   PowerSavingState.PARKED else "finishing a power off begun earlier")
              for h in hosts if h.status == HostStatus.MAINTENANCE and (
                  h.power_saving == PowerSavingState.STOPPING
                  or (h.power_saving == PowerSavingState.PARKED and h.minutes_since >= grace))]
    up = [h for h in hosts if h.status == HostStatus.UP]
    if starting or any(h.minutes_since < minutes for h in up):
        # Capacity was asked for, or a host just came back (the balancer needs the CPU
        # duration to give it VMs): nothing goes dark meanwhile.
        return steps
    empty = [h for h in up if h.vm_count == 0]
    reserve, low = policy.param("hosts_in_reserve"), policy.param("low_utilization")
    if len(empty) <= reserve or len(up) <= 1:
        return steps
    for host in sorted(empty, key=lambda h: h.name, reverse=True):
        if host.power_management and not host.power_saving and host.cpu_percent < low \
                and can_spare(host.name):
            steps.append(Step(PARK, host.name, f"it runs no VMs and uses {host.cpu_percent:.0f}% "
                              f"CPU (under {low}%); {len(empty)} empty Up hosts, "
                              f"{reserve} kept in reserve"))
            break
    return steps


# -- the loop ------------------------------------------------------------------------------

class PowerSaving:
    """``can_spare``: HA reservation's word on a host leaving (replaceable in unit tests);
    the CPU history is the statistics history's, a sample a minute."""

    def __init__(self, engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 can_spare: Callable[..., bool] = ha_reservation.can_spare):
        self.engine = engine
        self.clock = clock
        self.can_spare = can_spare

    def cycle(self) -> list[Step]:
        """One round over every cluster; the steps carried out."""
        done: list[Step] = []
        for name in self._clusters():
            try:
                done += self._cluster(name)
            except KestrelError as err:
                log.warning("power saving in cluster %s: %s", name, err.message)
        self._activate_started()
        return done

    def _clusters(self) -> list[str]:
        with self.engine.store.transaction(commit=False) as session:
            return list(session.scalars(select(Cluster.name).order_by(Cluster.name)))

    def _cluster(self, name: str) -> list[Step]:
        now = self.clock()
        with self.engine.store.transaction(commit=False) as session:
            cluster = session.execute(select(Cluster).where(Cluster.name == name)).scalar_one()
            facts = cluster_facts.load(session, cluster)
            rows = {h.name: h for h in cluster.hosts}
            views = [HostView(h.name, h.status, h.vm_count, h.used_cpu_percent,
                              rows[h.name].power_saving, _minutes(now, rows[h.name]),
                              bool(rows[h.name].power_management)) for h in facts.hosts]
            policy = facts.policy
            hot = self._overloaded(session, policy, views, rows, now)
            ha_reservation = bool(cluster.ha_reservation)
        ha_vms = {h.name: [vm.request for vm in facts.on(h.name) if vm.request.highly_available]
                  for h in facts.hosts}

        def spare(host: str) -> bool:
            return not ha_reservation or self.can_spare(facts.hosts, ha_vms, host)

        steps = plan(policy, views, overloaded=hot, can_spare=spare)
        service = self.engine.power_saving
        for step in steps:
            if step.action == FORGET:
                service.forget(step.host, step.reason)
            elif step.action == PARK:
                service.park(step.host, step.reason)
            elif step.action == POWER_OFF:
                service.switch_off(step.host, step.reason)
            elif step.action == CAPACITY:
                service.request_capacity(name, step.reason)
        return steps

    def _overloaded(self, session, policy: Policy, views: list[HostView], rows: dict,
                    now: datetime) -> bool:
        """Over the high threshold for the policy's duration; the history is read only when
        it could matter (a host to bring back, every Up host over the threshold now)."""
        if not enabled(policy) or not any(v.power_saving in (PowerSavingState.PARKED,
                                                             PowerSavingState.OFF)
                                          for v in views):
            return False
        high, minutes = policy.param("high_utilization"), \
            policy.param("cpu_overcommit_duration_minutes")
        up = [v for v in views if v.status == HostStatus.UP]
        if not up or any(v.cpu_percent <= high for v in up):
            return False
        history = stats_history.cpu_minutes(session, [rows[v.name].id for v in up], minutes,
                                            now)
        by_name = {v.name: history.get(rows[v.name].id, []) for v in up}
        return overloaded(by_name, [v.name for v in up], minutes, high)

    def _activate_started(self) -> None:
        """Hosts switched on for capacity: Up once their agent answers."""
        now = self.clock()
        with self.engine.store.transaction(commit=False) as session:
            starting = [(h.name, _minutes(now, h) * 60) for h in session.scalars(
                select(Host).where(Host.power_saving == PowerSavingState.STARTING))]
        for name, waited_s in starting:
            try:
                self.engine.power_saving.activate(name, "its agent answers after the power on")
            except KestrelError as err:
                if waited_s > STARTING_TIMEOUT_S:
                    self.engine.power_saving.give_up_starting(name, waited_s)
                else:
                    log.info("host %s powered on, its agent not answering yet: %s", name,
                             err.message)


def _minutes(now: datetime, host: Host) -> float:
    at = host.power_saving_at
    if at is None:
        return float("inf")
    at = at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite hands back naive datetimes
    return (now - at).total_seconds() / 60
