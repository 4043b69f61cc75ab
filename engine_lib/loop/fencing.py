"""Fencing a NonResponsive host: first softly, then by its power.

oVirt's order, and its reasons:

1. **Soft fence**: restart the host's agent over SSH (``soft_fence_command``,
   ``systemctl restart kestrel-agent`` on a real host), to the host holding the
   SSH host key recorded at its enrollment only (services.host_keys). Most silent hosts are
   a hung agent on a healthy machine; their VMs keep running, nothing moves.
2. **Power fence**: if the agent still does not answer ``soft_fence_grace_s``
   later (or SSH failed), switch the host off through its power management
   agent and ask its ``status`` until it says off. Only that confirmation is
   proof that the host's VMs no longer run, so only then are they released
   for a restart elsewhere.

Power management agents speak the fence-agents interface (ClusterLabs
FenceAgentAPI), so ``fence_ipmilan`` and friends plug in unchanged. A host's
power management names its agent; each call finds the executable again in the
system's directory or the administrator's list (fencing_settings.fence_agent_path),
never at a path stored with the host. The agent gets
``key=value`` lines on stdin (``action=on|off|reboot|status`` plus the
configured options such as ``ip``, ``username``, ``plug``), exit code 0 for
success and 1 for failure; for ``status``, 0 means on and 2 means off.

Fencing is skipped when half or more of the cluster's hosts lost connectivity
at once (``connectivity_threshold_percent``): then the engine's own network
is the likelier fault, and fencing would switch off healthy hosts.

Where the engine stands with a host is kept in ``hosts.fence_state`` ("" -
nothing done, "soft" - soft fence sent, "fenced" - power off confirmed,
"fenced_on" - switched on again after that), so an engine that restarts carries
on (powers the host on, say) rather than starting over blindly.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from engine_lib.model import Host
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.protocol.statuses import HostStatus
from engine_lib.services import host_keys
from engine_lib.services.common import audit, retry_on_conflict
from engine_lib.services.fence_agent import Result, power_off, power_on, resolved
from engine_lib.services.fencing_settings import FencingPolicy
from engine_lib.services.host_keys import HostKeyMissing

log = logging.getLogger("kestrel.engine.fencing")

SOFT, FENCED, POWERED_ON = "soft", "fenced", "fenced_on"
# Statuses that take part in the connectivity count; an operator's Maintenance,
# an Installing host and the like neither lost nor kept connectivity.
_COUNTED = frozenset({HostStatus.UP, HostStatus.CONNECTING, HostStatus.NON_RESPONSIVE})
_LOST = frozenset({HostStatus.CONNECTING, HostStatus.NON_RESPONSIVE})

POWER_ON_RETRY_S = 60.0


# -- decisions (pure) --------------------------------------------------------------------------

WAIT, SOFT_FENCE, POWER_FENCE, SKIP = "wait", "soft_fence", "power_fence", "skip"


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str


def connectivity_broken(statuses: list[str], threshold_percent: int) -> tuple[bool, str]:
    """Whether so many of a cluster's hosts lost connectivity that the fault is likelier
    the engine's network than the hosts: ``lost * 100 >= threshold * counted``."""
    counted = [s for s in statuses if s in _COUNTED]
    lost = sum(1 for s in counted if s in _LOST)
    broken = bool(counted) and lost * 100 >= threshold_percent * len(counted)
    return broken, f"{lost} of {len(counted)} hosts of the cluster lost connectivity"


def decide(policy: FencingPolicy, fence_state: str, since_change_s: float,
           cluster_statuses: list[str], has_power_management: bool) -> Decision:
    """What to do next about one NonResponsive host."""
    if fence_state in (FENCED, POWERED_ON):
        return Decision(SKIP, "power off already confirmed")
    if not policy.enabled:
        return Decision(SKIP, "fencing is disabled by the cluster's fencing policy")
    broken, counts = connectivity_broken(cluster_statuses, policy.connectivity_threshold_percent)
    if policy.skip_if_connectivity_broken and broken:
        return Decision(SKIP, f"{counts} (threshold {policy.connectivity_threshold_percent}%): "
                        "the engine's network is the likelier fault")
    if fence_state != SOFT:
        return Decision(SOFT_FENCE, "restart the agent over SSH")
    if since_change_s < policy.soft_fence_grace_s:
        return Decision(WAIT, "waiting for the soft-fenced agent to answer")
    if not has_power_management:
        return Decision(SKIP, "no power management configured: its VMs stay Unknown "
                        "until the host answers")
    return Decision(POWER_FENCE, "the agent did not come back after the soft fence")


# -- soft fence ------------------------------------------------------------------------------

def soft_fence(address: str, command: str, ssh_key: str, timeout: float,
               host_key_options: list[str]) -> Result:
    """Run the soft-fence command on the host as root over SSH, with the engine's key, to
    the host that holds its recorded host key only (``host_keys.login_options``)."""
    argv = ["ssh", "-i", ssh_key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            *host_key_options, "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={max(1, int(timeout))}", f"root@{address}", command]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Result(False, f"ssh: {err}")
    output = (done.stderr or done.stdout or "").strip()[-300:]
    return Result(done.returncode == 0, f"exit {done.returncode}{': ' + output if output else ''}")


# -- the fencer --------------------------------------------------------------------------------

class Fencer:
    """One fencing step per NonResponsive host per engine cycle.

    ``on_fenced(session, host, proof)`` runs in the transaction that records the
    confirmed power off, so "fenced" and "its VMs released" commit together.
    """

    def __init__(self, engine, ssh_key: str, on_fenced: Callable,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.engine = engine
        self.ssh_key = ssh_key
        self.on_fenced = on_fenced
        self.clock = clock
        self._said: dict[str, str] = {}  # host -> the last skip reason audited
        self.soft_fence = soft_fence  # replaceable: unit tests have no SSH to reach
        self._power_on_retry_at: dict[str, float] = {}  # host -> monotonic time

    def step(self, host_name: str) -> None:
        with self.engine.store.transaction(commit=False) as session:
            host = _host(session, host_name)
            if host.status != HostStatus.NON_RESPONSIVE:
                return
            policy = FencingPolicy.of(host.cluster.fencing_policy)
            statuses = [h.status for h in host.cluster.hosts]
            since = (self.clock() - _aware(host.fence_changed_at)).total_seconds() \
                if host.fence_changed_at else float("inf")
            pm = dict(host.power_management or {})
            decision = decide(policy, host.fence_state, since, statuses, bool(pm))
            address, command, keys = host.address, host.soft_fence_command, host.ssh_host_keys
        if decision.action in (SKIP, WAIT):
            if decision.action == SKIP and self._said.get(host_name) != decision.reason:
                self._said[host_name] = decision.reason
                self._audit(host_name, f"not fencing host: {decision.reason}", "warning")
            return
        self._said.pop(host_name, None)
        if decision.action == SOFT_FENCE:
            try:
                options = host_keys.login_options(self.engine.config.engine_dir, host_name, keys)
            except HostKeyMissing as err:
                result = Result(False, err.message)
            else:
                result = self.soft_fence(address, command, self.ssh_key, policy.ssh_timeout_s,
                                         options)
            self._set_state(host_name, SOFT, f"soft fence ({command!r} over SSH): "
                            f"{'sent' if result.ok else 'failed'} - {result.detail}",
                            "info" if result.ok else "warning")
            if result.ok or not pm:
                return  # give the agent its grace, or wait for it to come back by itself
        self._power_fence(host_name, pm, policy)

    def _power_fence(self, host_name: str, pm: dict, policy: FencingPolicy) -> None:
        self._audit(host_name, f"power fencing host with {pm['agent']}", "warning")
        try:
            result = power_off(resolved(pm, self.engine.config), policy.power_timeout_s)
        except InvalidSpec as err:
            result = Result(False, err.message)
        if not result.ok:
            # Back to "soft" with a fresh time: the next try comes after the grace again.
            self._set_state(host_name, SOFT, f"power fence failed: {result.detail}; its VMs "
                            f"stay Unknown; next try in {policy.soft_fence_grace_s:.0f}s",
                            "error")
            return
        proof = f"host {host_name} was fenced: {result.detail}"
        self._set_state(host_name, FENCED, proof, "warning", fenced=True)

    def power_on_fenced(self, host_name: str) -> None:
        """Switch a fenced host back on (if the policy says so); it rejoins when its agent
        answers. Also after an engine restart: "fenced" means "on" is still owed."""
        with self.engine.store.transaction(commit=False) as session:
            host = _host(session, host_name)
            if host.fence_state != FENCED or not host.power_management:
                return
            policy = FencingPolicy.of(host.cluster.fencing_policy)
            pm = dict(host.power_management)
        if not policy.power_on_after_fence \
                or time.monotonic() < self._power_on_retry_at.get(host_name, 0.0):
            return
        try:
            result = power_on(resolved(pm, self.engine.config), policy.power_timeout_s)
        except InvalidSpec as err:
            result = Result(False, err.message)
        if result.ok:
            self._power_on_retry_at.pop(host_name, None)
            self._set_state(host_name, POWERED_ON, f"fenced host powered on: {result.detail}")
        else:
            # The VMs are safe elsewhere; a host that will not come on is retried slowly.
            self._power_on_retry_at[host_name] = time.monotonic() + POWER_ON_RETRY_S
            self._audit(host_name, f"powering the fenced host on failed: {result.detail}; "
                        f"trying again in {POWER_ON_RETRY_S:.0f}s", "error")

    def recovered(self, host_name: str) -> None:
        """The host answers again: the next outage starts fencing from the beginning."""
        self._said.pop(host_name, None)
        self._set_state(host_name, "", "host answers again; fencing state cleared")

    @retry_on_conflict
    def _set_state(self, host_name: str, state: str, message: str, severity: str = "info",
                   fenced: bool = False) -> None:
        with self.engine.store.transaction() as session:
            host = _host(session, host_name)
            host.fence_state, host.fence_changed_at = state, self.clock()
            audit(session, "host", host_name, message, severity)
            if fenced:
                self.on_fenced(session, host, message)
        log.log(logging.WARNING if severity != "info" else logging.INFO,
                "host %s: %s", host_name, message)

    def _audit(self, host_name: str, message: str, severity: str = "info") -> None:
        with self.engine.store.transaction() as session:
            audit(session, "host", host_name, message, severity)
        log.log(logging.WARNING if severity != "info" else logging.INFO,
                "host %s: %s", host_name, message)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; all ours are UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _host(session, name: str) -> Host:
    return session.execute(select(Host).where(Host.name == name)).scalar_one()
