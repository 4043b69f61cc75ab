"""High availability: restart HA VMs of a failed host elsewhere, never two copies.

A pass (``HighAvailability.cycle``) runs at the host interval, in a thread of
its own beside the Monitor (engine_lib.loop.runner). The rules, oVirt's:

- A host that went NonResponsive owes its HA VMs a restart: they are marked
  ``ha_restart_pending`` at once, in the database, so the intent survives an
  engine restart. Nothing is restarted on that mark alone.
- A pending VM is restarted only with proof that it runs nowhere: its host's
  power off was confirmed by the fence agent (the Fencer releases its VMs as
  Down in the same transaction), or its host answered again and its libvirt
  does not run the VM (the Monitor then records it Down). A VM still Unknown
  has no proof and waits, however long.
- Before every start, every Up host is asked whether it runs the VM: an
  engine killed halfway through a restart finds the copy it already started
  and adopts it instead of starting a second one.
- A restart whose start call ended without an answer (a timeout: the agent
  may still be running slow hooks) leaves the VM waiting on that host; it is
  not restarted anywhere until that host has answered for it (the Monitor
  records it running, or Down and owed a restart again).
- Pending VMs restart highest priority first, through the normal start path
  (scheduler, resource claim, agent), so placement rules hold as for any start.

No host's heartbeat or VM poll delays a pass, and each host's fencing runs in a
thread of its own (engine_lib.loop.host_tasks): a fence agent or SSH that takes
its full timeout holds neither the restarts of VMs already proven down nor the
fencing of another host.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select

from engine_lib import engine_key
from engine_lib.loop.fencing import FENCED, POWERED_ON, Fencer
from engine_lib.loop.host_tasks import HostTasks
from engine_lib.model import Host, Vm
from engine_lib.protocol.errors import KestrelError, NoValidHost
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.services.common import audit, get_vm, retry_on_conflict
from engine_lib.services.host_records import HostRef

log = logging.getLogger("kestrel.engine.ha")

START_TIMEOUT_S = 120
# After a failed restart (no host, agent error) the VM waits this long before the next
# try, so a cluster without room is not asked again every cycle.
RETRY_AFTER_S = 10.0
# A pending VM in one of these on an Up host is running (or being stopped): done.
_RUNNING = frozenset({VmStatus.POWERING_UP, VmStatus.UP, VmStatus.PAUSED,
                      VmStatus.POWERING_DOWN})


def is_ha(vm: Vm) -> bool:
    return bool((vm.high_availability or {}).get("enabled"))


def restart_order(vms: list[Vm]) -> list[Vm]:
    """Highest priority first; ties by name, so the order is the same every cycle."""
    return sorted(vms, key=lambda vm: (-int((vm.high_availability or {}).get("priority", 0)),
                                       vm.name))


def default_ssh_key(engine) -> str:
    """The engine's SSH key for soft fencing: ``<engine_dir>/ssh/id_ed25519`` (engine_key)."""
    return str(engine_key.private_key(engine.config.engine_dir))


class HighAvailability:
    """``fence_wait_s``: how long a pass waits for the fencing it started before it goes
    on with the restarts (None: until it ends); what a fence proves later is acted on
    by the next pass."""

    def __init__(self, engine, ssh_key: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 fence_wait_s: float | None = None):
        self.engine = engine
        self.fencer = Fencer(engine, ssh_key or default_ssh_key(engine), release_vms, clock)
        self.fence_wait_s = fence_wait_s
        # Every fencing step of one host (fence, power on, clear) in turn, hosts side by side.
        self._fencing = HostTasks("fencing")
        self._said: dict[str, str] = {}  # VM -> the last "cannot restart yet" audited
        self._retry_at: dict[str, float] = {}  # VM -> monotonic time of its next try

    def cycle(self) -> None:
        """One HA pass: note intents, fence, restart what is proven down, power fenced on."""
        self._fence(self._recovered_hosts(), self.fencer.recovered)
        self._fence(self._mark_intents(), self.fencer.step)
        self._restart_pending()
        # Fenced hosts go back on only after their VMs restarted: the VMs come first.
        self._fence(self._fenced_hosts(), self.fencer.power_on_fenced)

    def _fence(self, hosts: list[str], step: Callable[[str], None]) -> None:
        """``step`` each host in its own thread (a host whose fencing still runs waits for
        the next pass), then wait for them as ``fence_wait_s`` says."""
        started = [host for host in hosts
                   if self._fencing.submit(host, functools.partial(step, host))]
        self._fencing.wait(started, self.fence_wait_s)

    # -- hosts -------------------------------------------------------------------------------

    def _recovered_hosts(self) -> list[str]:
        with self.engine.store.transaction(commit=False) as session:
            return list(session.scalars(select(Host.name).where(
                Host.status == HostStatus.UP, Host.fence_state != "")))

    @retry_on_conflict
    def _mark_intents(self) -> list[str]:
        """Mark the HA VMs of NonResponsive hosts pending; the names of those hosts."""
        with self.engine.store.transaction() as session:
            hosts = list(session.scalars(select(Host).where(
                Host.status == HostStatus.NON_RESPONSIVE).order_by(Host.name)))
            for host in hosts:
                for vm in session.scalars(select(Vm).where(
                        Vm.run_on_host_id == host.id, Vm.status.in_(VmStatus.ACTIVE),
                        Vm.ha_restart_pending.is_(False))):
                    if is_ha(vm):
                        vm.ha_restart_pending, vm.ha_proof = True, ""
                        audit(session, "vm", vm.name, f"highly available VM: its host "
                              f"{host.name} is NonResponsive; it restarts elsewhere once it "
                              "is proven not to run there", "warning")
            return [h.name for h in hosts if h.fence_state not in (FENCED, POWERED_ON)]

    def _fenced_hosts(self) -> list[str]:
        with self.engine.store.transaction(commit=False) as session:
            return list(session.scalars(select(Host.name).where(
                Host.status == HostStatus.NON_RESPONSIVE, Host.fence_state == FENCED)))

    # -- VMs ---------------------------------------------------------------------------------

    def _restart_pending(self) -> None:
        with self.engine.store.transaction(commit=False) as session:
            pending = restart_order(list(session.scalars(
                select(Vm).where(Vm.ha_restart_pending.is_(True)))))
            plan = [(vm.name, vm.id, vm.status, vm.run_on_host.status if vm.run_on_host else None,
                     is_ha(vm), vm.launch_unconfirmed) for vm in pending]
        for name, vm_id, status, host_status, still_ha, unconfirmed in plan:
            try:
                if not still_ha:
                    self._done(name, "high availability was turned off; no restart")
                    continue
                if unconfirmed:
                    continue  # its host owes an answer for the last start: no second copy
                self._handle(name, vm_id, status, host_status)
            except KestrelError as err:
                self._retry_at[name] = time.monotonic() + RETRY_AFTER_S
                self._say(name, f"HA restart not possible yet: {err.message}", "error")
            except Exception:
                log.exception("HA restart of VM %s failed", name)

    def _handle(self, name: str, vm_id: str, status: str, host_status: str | None) -> None:
        if status == VmStatus.UNKNOWN or (host_status not in (None, HostStatus.UP)):
            return  # no proof yet: its host may still run it
        if status in _RUNNING:
            self._done(name, "it runs on its host; no restart needed")
            return
        if time.monotonic() < self._retry_at.get(name, 0.0):
            return
        # Down (proven) or WaitForLaunch (a restart interrupted): look everywhere first.
        found = self._running_somewhere(vm_id)
        if found is not None:
            host, report = found
            self._adopt(name, host, report)
            return
        self._start(name)

    def _running_somewhere(self, vm_id: str) -> tuple[HostRef, dict] | None:
        """The Up host that runs the VM, if any; raises when an Up host cannot say."""
        with self.engine.store.transaction(commit=False) as session:
            hosts = [HostRef.of(h) for h in session.scalars(
                select(Host).where(Host.status == HostStatus.UP).order_by(Host.name))]
        for host in hosts:
            for report in self.engine.agent(host.address, host.port).list_vms():
                if report.get("id") == vm_id and report.get("status") != VmStatus.DOWN:
                    return host, report
        return None

    @retry_on_conflict
    def _adopt(self, name: str, host: HostRef, report: dict) -> None:
        with self.engine.store.transaction() as session:
            vm = get_vm(session, name)
            vm.run_on_host = session.execute(
                select(Host).where(Host.name == host.name)).scalar_one()
            vm.status, vm.exit_reason = report.get("status", VmStatus.UP), ""
            vm.ha_restart_pending = False
            audit(session, "vm", name, f"highly available VM found running on host {host.name}; "
                  "not started again")
        self._said.pop(name, None)

    def _start(self, name: str) -> None:
        with self.engine.store.transaction() as session:
            vm = get_vm(session, name)
            vm.ha_proof = vm.ha_proof or vm.exit_reason or "its host reported it not running"
            priority = (vm.high_availability or {}).get("priority", 0)
            audit(session, "vm", name, f"restarting highly available VM (priority {priority}); "
                  f"proof it runs nowhere: {vm.ha_proof}", "warning")
        try:
            entity = self.engine.vms._start(name, wait=True, timeout=START_TIMEOUT_S)
        except NoValidHost as err:
            self._retry_at[name] = time.monotonic() + RETRY_AFTER_S
            self._say(name, f"HA restart waits for a host: {err.message}", "error")
            return
        self._done(name, f"restarted on host {entity.get('host')}")

    @retry_on_conflict
    def _done(self, name: str, message: str) -> None:
        with self.engine.store.transaction() as session:
            vm = get_vm(session, name)
            vm.ha_restart_pending, vm.ha_proof = False, ""
            audit(session, "vm", name, f"highly available VM: {message}")
        self._said.pop(name, None)
        log.info("HA VM %s: %s", name, message)

    def _say(self, name: str, message: str, severity: str) -> None:
        """Audit a reason a restart waits, once per reason (the pass repeats every cycle)."""
        if self._said.get(name) == message:
            return
        self._said[name] = message
        with self.engine.store.transaction() as session:
            audit(session, "vm", name, message, severity)
        log.warning("HA VM %s: %s", name, message)


def release_vms(session, host: Host, proof: str) -> None:
    """The host's power off is confirmed: its VMs are Down, its HA VMs owed a restart.

    Runs in the transaction that records the fence, so both commit or neither.
    """
    for vm in session.scalars(select(Vm).where(
            Vm.run_on_host_id == host.id, Vm.status.in_(VmStatus.ACTIVE))):
        vm.status, vm.exit_reason, vm.run_on_host = VmStatus.DOWN, proof[:255], None
        vm.launch_unconfirmed = False  # powered off: nothing of it runs there
        if is_ha(vm):
            vm.ha_restart_pending, vm.ha_proof = True, proof
        audit(session, "vm", vm.name, f"VM is Down: {proof}", "warning")
