"""Power saving with power management: the hosts the engine parks, powers off and brings back.

oVirt's automatic host power management under the power_saving policy
(engine_lib.loop.power_saving decides when): an emptied host goes to
Maintenance, is switched off through its fence agent after a grace period, and
is switched on and activated again when capacity is needed.

``Host.power_saving`` (statuses.PowerSavingState) records how far the engine
got, so an engine that restarts carries on where it stopped. A host an operator
activates meanwhile is the operator's again (maintenance.leave clears it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select

from engine_lib.model import Host
from engine_lib.protocol.errors import InvalidSpec, KestrelError
from engine_lib.protocol.statuses import HostStatus, PowerSavingState
from engine_lib.services import cluster_facts
from engine_lib.services import maintenance as host_maintenance
from engine_lib.services.common import audit, get_cluster, get_host, retry_on_conflict
from engine_lib.services.fence_agent import Result, power_off, power_on, resolved
from engine_lib.services.fencing_settings import FencingPolicy
from engine_lib.store import lock_cluster

log = logging.getLogger("kestrel.engine.power_saving")

PARKED, STOPPING, OFF, STARTING = (PowerSavingState.PARKED, PowerSavingState.STOPPING,
                                   PowerSavingState.OFF, PowerSavingState.STARTING)


class PowerSavingService:
    def __init__(self, engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.engine = engine
        self.clock = clock

    # -- capacity ----------------------------------------------------------------------------

    def request_capacity(self, cluster: str, reason: str) -> str | None:
        """Bring back one host power saving took from ``cluster``: a parked one is activated
        at once, else an "off" one is switched on (activated by the loop once its agent
        answers). A host already starting is the answer too: one request, one host. Returns
        the host's name, or None when power saving holds none (or none would switch on)."""
        tried: set[str] = set()
        while True:
            host, state = self._claim(cluster, tried)
            if host is None or state == STARTING:
                return host
            tried.add(host)
            if state == PARKED:
                try:
                    self.activate(host, f"capacity needed: {reason}")
                except KestrelError as err:
                    self._audit(host, f"power saving: activating the parked host failed: "
                                f"{err.message}", "error")
                    continue
                return host
            if self._switch_on(host, reason):
                return host

    @retry_on_conflict
    def _claim(self, cluster: str, tried: set[str]) -> tuple[str | None, str]:
        """The host to bring back, marked "starting" if it is off (under the cluster lock, so
        two requests at once never switch on two hosts)."""
        with self.engine.store.transaction() as session:
            locked = lock_cluster(session, get_cluster(session, cluster).id)
            hosts = list(session.scalars(select(Host).where(
                Host.cluster_id == locked.id, Host.power_saving != "").order_by(Host.name)))
            for wanted in (STARTING, PARKED, OFF):
                for host in hosts:
                    if host.power_saving != wanted or host.name in tried \
                            or host.status != HostStatus.MAINTENANCE:
                        continue
                    if wanted == OFF:
                        self._set(host, STARTING)
                    return host.name, wanted
        return None, ""

    def _switch_on(self, name: str, reason: str) -> bool:
        pm, policy = self._power_management(name)
        result = self._fence(pm, policy, power_on, name)
        if result.ok:
            self._record(name, STARTING, f"power saving: host powered on ({reason}): "
                         f"{result.detail}; it is activated once its agent answers")
            return True
        # Off again (not retried now: the next request, or the loop's next round, tries).
        self._record(name, OFF, f"power saving: powering the host on failed: {result.detail}",
                     "error")
        return False

    # -- parking and switching off -----------------------------------------------------------

    @retry_on_conflict
    def park(self, name: str, reason: str) -> bool:
        """Maintenance for an Up host that runs nothing, checked again under the cluster lock
        (a start placed there meanwhile keeps it Up). Whether it was parked."""
        with self.engine.store.transaction() as session:
            host = get_host(session, name)
            facts = cluster_facts.load(session, lock_cluster(session, host.cluster_id))
            state = next(h for h in facts.hosts if h.name == name)
            if host.status != HostStatus.UP or state.vm_count or host.power_saving:
                return False
            host.status = HostStatus.MAINTENANCE
            self._set(host, PARKED)
            audit(session, "host", name, f"power saving: host is in Maintenance ({reason}); "
                  "it is powered off after the grace period")
        log.info("host %s parked by power saving: %s", name, reason)
        return True

    def switch_off(self, name: str, reason: str) -> bool:
        """Switch a parked host off through its fence agent; "off" once its status says off."""
        if not self._mark_stopping(name):
            return False
        pm, policy = self._power_management(name)
        result = self._fence(pm, policy, power_off, name)
        if result.ok:
            self._record(name, OFF, f"power saving: host powered off ({reason}): "
                         f"{result.detail}")
            return True
        # Parked again with a fresh time: the next try comes after the grace.
        self._record(name, PARKED, f"power saving: powering the host off failed: "
                     f"{result.detail}; it stays in Maintenance", "error")
        return False

    @retry_on_conflict
    def _mark_stopping(self, name: str) -> bool:
        with self.engine.store.transaction() as session:
            host = get_host(session, name)
            if host.status != HostStatus.MAINTENANCE or host.power_saving not in (PARKED,
                                                                                 STOPPING):
                return False
            self._set(host, STOPPING)
            return True

    # -- coming back -------------------------------------------------------------------------

    def activate(self, name: str, reason: str) -> None:
        """Leave Maintenance (the agent must answer: raises while it does not) and hand the
        host back to scheduling."""
        host_maintenance.leave(self.engine, name)
        self._record(name, "", f"power saving: host is Up again ({reason})")

    def give_up_starting(self, name: str, waited_s: float) -> None:
        self._record(name, OFF, f"power saving: the host's agent did not answer within "
                     f"{waited_s:.0f}s of its power on; it counts as off again", "error")

    @retry_on_conflict
    def forget(self, name: str, why: str) -> None:
        """An operator took the host out of Maintenance (or power saving's hands) meanwhile."""
        with self.engine.store.transaction() as session:
            host = get_host(session, name)
            if host.power_saving:
                self._set(host, "")
                audit(session, "host", name, f"power saving: no longer handles the host: {why}")

    # -- helpers -----------------------------------------------------------------------------

    def _power_management(self, name: str) -> tuple[dict, FencingPolicy]:
        with self.engine.store.transaction(commit=False) as session:
            host = get_host(session, name)
            return dict(host.power_management or {}), FencingPolicy.of(
                host.cluster.fencing_policy)

    def _fence(self, pm: dict, policy: FencingPolicy, action, name: str) -> Result:
        if not pm:
            return Result(False, f"host {name} has no power management")
        try:
            return action(resolved(pm, self.engine.config), policy.power_timeout_s)
        except InvalidSpec as err:
            return Result(False, err.message)

    def _set(self, host: Host, state: str) -> None:
        host.power_saving, host.power_saving_at = state, self.clock()

    @retry_on_conflict
    def _record(self, name: str, state: str, message: str, severity: str = "info") -> None:
        with self.engine.store.transaction() as session:
            self._set(get_host(session, name), state)
            audit(session, "host", name, message, severity)
        log.log(logging.INFO if severity == "info" else logging.WARNING, "host %s: %s", name,
                message)

    @retry_on_conflict
    def _audit(self, name: str, message: str, severity: str = "info") -> None:
        with self.engine.store.transaction() as session:
            audit(session, "host", name, message, severity)

