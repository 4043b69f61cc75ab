"""The engine loop's one rule for a VM's status, whichever way the news came.

The Monitor's VM poll (a host's full list of its VMs) and the event follower
(one change an agent pushes the moment it happens) both hand what the host
said to ``judge``, as ovirt-engine's poll and event refreshers both feed
VmsMonitoring/VmAnalyzer. The rule, in order:

1. Only a VM the engine runs on that host, in an active status, is judged: a
   report of a VM that has moved on (migrated, restarted elsewhere) is history.
2. A VM being launched there (WaitForLaunch, RestoringState) is settled only
   by the host's word. The agent lists a VM from the moment it takes a start
   until that start has finished or failed, so a launching status it reports
   confirms nothing: the VM waits, holding its claim. A VM the host does not
   list is left alone while the start call is in flight; once that call ended
   without an answer (``launch_unconfirmed``: timeout, reset), the host not
   listing it is its answer: Down. A restore the host answered Down for leaves
   the VM Suspended (its memory volume kept, to try again); one it reports
   running has consumed its memory volume.
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

A host may also run a VM the engine does not run there (a start whose answer
was lost before this rule, a host fenced and back): ``decide_unowned`` says
what becomes of such a domain, ``settle_unowned`` does it. A domain that
carries our metadata is adopted when the engine runs its VM nowhere (Down,
no host), and destroyed when the engine runs the VM on another host (that
copy is the one the engine placed and the host confirmed). Anything else
(a migration, a VM launching or Unknown elsewhere, a domain without our
metadata, a VM this database does not know) is left alone.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from engine_lib.model import Host, Vm
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import KestrelError, VmNotFound
from engine_lib.protocol.statuses import VmStatus
from engine_lib.services.common import audit
from engine_lib.services.host_records import HostRef

log = logging.getLogger("kestrel.engine.monitoring")

# The agent is starting or restoring the VM: no answer yet, the claim stays.
LAUNCHING = VmStatus.LAUNCHING
# The domain runs (what a host may confirm of a launch, what a stray copy is).
RUNNING = frozenset({VmStatus.POWERING_UP, VmStatus.UP, VmStatus.PAUSED,
                     VmStatus.POWERING_DOWN})
# decide_unowned's answers.
ADOPT, DESTROY = "adopt", "destroy"


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
    if vm.status in LAUNCHING:
        return _launching(vm, host, report)
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


def _launching(vm: Vm, host: Host, report: Report) -> Change | None:
    """Rule 2: a VM whose start or restore on ``host`` waits for the host's word."""
    if report.status is None and not vm.launch_unconfirmed:
        return None  # the start call is in flight: the agent may not have taken it yet
    if report.status in LAUNCHING:
        # The agent is still at it (hooks, volumes, libvirt): the VM keeps waiting.
        if report.status == vm.status:
            return None
        return Change(report.status, f"VM is {report.status} on host {host.name} (was "
                                     f"{vm.status}); it waits for the host")
    if report.status == VmStatus.MIGRATING_TO:
        return None  # history, as for any VM (rule 4)
    if report.status is None or report.status == VmStatus.DOWN:
        reason = report.exit_reason or f"host {host.name} reports no start of it"
        if vm.memory_volume:
            return Change(VmStatus.SUSPENDED, f"restoring on host {host.name} failed "
                          f"({reason}); the VM stays Suspended with its saved memory",
                          remove_from_host=report.status is not None)
        return Change(VmStatus.DOWN, f"VM is Down: {reason}", exit_reason=reason,
                      remove_from_host=report.status is not None)
    return Change(report.status, f"VM is {report.status} on host {host.name} (was "
                                 f"{vm.status}): the host confirms it runs")


def apply(session, vm: Vm, change: Change) -> None:
    """Write ``change`` to the VM's row and the audit log (the caller's transaction)."""
    if change.down:
        vm.status, vm.exit_reason, vm.run_on_host = VmStatus.DOWN, change.exit_reason, None
    elif change.status == VmStatus.SUSPENDED:  # a restore failed: its memory volume stays
        vm.status, vm.exit_reason, vm.run_on_host = VmStatus.SUSPENDED, "", None
    else:
        vm.status = change.status
        if vm.memory_volume and change.status in RUNNING:
            vm.memory_volume = None  # restored: the agent deleted the stale saved state
    if change.status not in LAUNCHING:
        vm.launch_unconfirmed = False  # the host has answered for it
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


def decide_unowned(vm: Vm | None, host: Host, report: dict) -> str | None:
    """What becomes of a domain ``host`` reports for ``vm`` (None: a VM this database does
    not know) while the engine does not run ``vm`` there: ADOPT, DESTROY or None."""
    if vm is None or report.get("status") not in RUNNING or vm.run_on_host_id == host.id:
        return None
    if vm.status in (VmStatus.MIGRATING_FROM, VmStatus.MIGRATING_TO):
        return None  # engine.migrations settles where it runs, with both agents' word
    if vm.run_on_host_id is None:
        # Running nowhere in the engine's view: this copy is the only one. A Suspended
        # VM's saved memory is another copy of its state: that one is the operator's call.
        return ADOPT if vm.status == VmStatus.DOWN else None
    # The engine placed it elsewhere: the copy there is the VM once its host confirmed
    # it runs; a VM still launching or Unknown there has not been confirmed yet.
    return DESTROY if vm.status in RUNNING else None


def settle_unowned(engine, ref: HostRef, reported: dict[str, dict], ours: set[str]) -> None:
    """Adopt or destroy the running domains ``ref`` reported (its list of VMs, by id) for
    VMs the engine does not run there (``ours``: those it does)."""
    for vm_id, report in reported.items():
        if vm_id in ours or report.get("status") not in RUNNING:
            continue
        try:
            _settle_unowned_vm(engine, ref, vm_id)
        except (KestrelError, StaleDataError) as err:
            log.warning("could not settle VM %s found running on host %s: %s", vm_id,
                        ref.name, getattr(err, "message", err))


def _settle_unowned_vm(engine, ref: HostRef, vm_id: str) -> None:
    # The row as it is before the host is asked again: a start, stop or migration that
    # changes it meanwhile makes the host's answer stale, and the next poll decides.
    with engine.store.transaction(commit=False) as session:
        known = session.get(Vm, vm_id)
        if known is None:
            return  # a VM this database does not know: left alone
        version = known.version
    client = engine.agent(ref.address, ref.port)
    report = client.vm_status(vm_id)
    try:
        carried = metadata.carried(ET.fromstring(client.vm_xml(vm_id)))
    except ET.ParseError:
        carried = False
    if not carried:
        return  # not a domain of ours: someone else's business
    with engine.store.transaction() as session:
        vm = session.execute(select(Vm).where(Vm.id == vm_id).with_for_update()
                             ).scalar_one_or_none()
        host = session.execute(select(Host).where(Host.name == ref.name)).scalar_one()
        if vm is None or vm.version != version:
            return
        action = decide_unowned(vm, host, report)
        if action is None:
            return
        name = vm.name
        if action == ADOPT:
            vm.run_on_host, vm.status, vm.exit_reason = host, report["status"], ""
            vm.launch_unconfirmed = False
            audit(session, "vm", name, f"VM found running on host {host.name} with the "
                  f"engine's metadata while the engine ran it nowhere: adopted "
                  f"({report['status']})", "warning")
            log.warning("VM %s found running on host %s: adopted", name, host.name)
            return
        elsewhere = vm.run_on_host.name if vm.run_on_host else "?"
    client.destroy_vm(vm_id)
    try:
        client.remove_vm(vm_id)
    except VmNotFound:
        pass
    with engine.store.transaction() as session:
        audit(session, "vm", name, f"a stray copy of the VM on host {ref.name} was destroyed: "
              f"the VM runs on host {elsewhere}", "warning")
    log.warning("VM %s: stray copy on host %s destroyed (it runs on host %s)", name, ref.name,
                elsewhere)
