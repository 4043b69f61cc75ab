"""The engine loop's one rule for a VM's status, whichever way the news came.

The Monitor's VM poll (a host's full list of its VMs) and the event follower
(one change an agent pushes the moment it happens) both hand what the host
said to ``judge``, as ovirt-engine's poll and event refreshers both feed
VmsMonitoring/VmAnalyzer. The rule, in order:

1. Only a VM the engine runs on that host, in an active status, is judged: a
   report of a VM that has moved on (migrated, restarted elsewhere) is history.
2. A VM whose launch is in flight (WaitForLaunch) that the host does not list
   yet is left alone: the start call to the agent has not returned.
3. MigratingFrom is engine.migrations' to settle, with both agents' word.
4. A MigratingTo report is history: the engine moves a VM to its destination
   only once it runs there, so the incoming copy's status predates that switch.
5. An event does not settle SavingState: the suspend call does (Suspended, not
   Down). The poll still does, the safety net when that call died half-way.
6. A VM goes Down only because its host said so (reported Down, or absent from
   its full list), with the host's exit reason; it then holds no host.
7. Any other status the host reports is the VM's status.

Every change is audited. A host silent for good (NonResponsive) leaves its VMs
Unknown (``host_lost``), never Down on a guess: a partitioned host's VMs may
still run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from engine_lib.model import Host, Vm
from engine_lib.protocol.errors import KestrelError, VmNotFound
from engine_lib.protocol.statuses import VmStatus
from engine_lib.services.common import audit
from engine_lib.services.host_records import HostRef

log = logging.getLogger("kestrel.engine.monitoring")


@dataclass(frozen=True)
class Report:
    """What a host said about one VM."""

    status: str | None  # None: the host's full list does not name the VM
    exit_reason: str | None = None
    # Pushed by the agent (one change, event path), not its full list (poll path).
    event: bool = False

    @classmethod
    def polled(cls, entry: dict | None) -> Report:
        """The VM's entry in the host's list of VMs, or None when it is not listed."""
        return cls(None) if entry is None else cls(entry["status"], entry.get("exit_reason"))

    @classmethod
    def pushed(cls, event: dict) -> Report:
        """One status change from the agent's event stream."""
        return cls(event["status"], event.get("exit_reason"), event=True)


@dataclass(frozen=True)
class Change:
    """What the rule decided: the VM's new status and the audit entry saying so."""

    status: str
    message: str
    exit_reason: str | None = None  # Down only
    # Down by the host's word, and the host still holds the Down domain: remove it
    # there (``forget_on_host``), as a stop through the engine does.
    remove_from_host: bool = False

    @property
    def down(self) -> bool:
        return self.status == VmStatus.DOWN


def decide(vm: Vm, host: Host, report: Report) -> Change | None:
    """The change ``report`` makes to ``vm`` on ``host``, or None (the rule above)."""
    if vm.run_on_host_id != host.id or vm.status not in VmStatus.ACTIVE:
        return None
    if report.status is None and vm.status == VmStatus.WAIT_FOR_LAUNCH:
        return None
    if vm.status == VmStatus.MIGRATING_FROM or report.status == VmStatus.MIGRATING_TO:
        return None
    if report.event and vm.status == VmStatus.SAVING_STATE:
        return None
    if report.status is None or report.status == VmStatus.DOWN:
        reason = report.exit_reason or f"not running on host {host.name}"
        return Change(VmStatus.DOWN, f"VM is Down: {reason}", exit_reason=reason,
                      remove_from_host=report.status is not None)
    if report.status != vm.status:
        return Change(report.status, f"VM is {report.status} (was {vm.status})")
    return None


def apply(session, vm: Vm, change: Change) -> None:
    """Write ``change`` to the VM's row and the audit log (the caller's transaction)."""
    if change.down:
        vm.status, vm.exit_reason, vm.run_on_host = VmStatus.DOWN, change.exit_reason, None
    else:
        vm.status = change.status
    audit(session, "vm", vm.name, change.message)


def judge(session, vm: Vm, host: Host, report: Report) -> Change | None:
    """Decide and apply: the one entry point of the poll and the event paths."""
    change = decide(vm, host, report)
    if change is not None:
        apply(session, vm, change)
    return change


def host_lost(session, host: Host) -> None:
    """The host is NonResponsive: its active VMs are Unknown until it answers again."""
    for vm in session.scalars(select(Vm).where(
            Vm.run_on_host_id == host.id, Vm.status.in_(VmStatus.ACTIVE))):
        if vm.status != VmStatus.UNKNOWN:
            vm.status = VmStatus.UNKNOWN
            audit(session, "vm", vm.name, f"VM is Unknown: its host {host.name} is "
                  "NonResponsive", "warning")


def forget_on_host(engine, ref: HostRef, vm_id: str) -> None:
    """Remove a VM that went Down from its host, as a stop does: the engine has its
    exit reason now, and a domain left defined there would keep its disks busy."""
    try:
        engine.agent(ref.address, ref.port).remove_vm(vm_id)
    except VmNotFound:
        pass
    except KestrelError as err:
        log.warning("could not remove VM %s, Down, from host %s: %s", vm_id, ref.name,
                    err.message)
