"""The agent's registry: this host's VMs and what they are doing, in memory.

libvirt knows what QEMU does; the registry knows what the VM does, in the
engine's words (oVirt's statuses), including what libvirt cannot tell: that
the agent is launching it (WaitForLaunch), shutting it down, migrating it, or
that a guest powered itself off ("user shutdown") rather than being shut down
by the engine. Lifecycle events update it the moment they happen
(engine_lib.agent.libvirt_events); agent operations update it as they go.

A VM that went Down stays here, Down with its exit reason, until the engine
removes it (DELETE): that is how the engine learns why it stopped, even when
libvirt has already forgotten a transient domain.

Pure and thread-safe; libvirt's event numbers are written out (stable ABI)
so this module loads and is tested without libvirt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from engine_lib.agent.states import VmStatus

# virDomainEventType
DEFINED, UNDEFINED, STARTED, SUSPENDED, RESUMED, STOPPED, SHUTDOWN, PMSUSPENDED, CRASHED = \
    range(9)
EVENT_NAMES = ("defined", "undefined", "started", "suspended", "resumed", "stopped",
               "shutdown", "pmsuspended", "crashed")

# virDomainEventSuspendedDetailType values that are not a plain pause.
_SUSPENDED_MIGRATION = {1, 7}  # MIGRATED, POSTCOPY
# virDomainEventStoppedDetailType -> exit reason. SHUTDOWN (0) depends on who asked.
_STOPPED_REASONS = {1: "destroyed", 2: "crashed", 3: "migrated", 4: "saved", 5: "failed",
                    6: "from-snapshot"}
USER_SHUTDOWN = "user shutdown"  # the guest powered itself off
ADMIN_SHUTDOWN = "shutdown"      # the engine asked (ACPI through this agent)


@dataclass
class VmRecord:
    id: str
    name: str
    status: VmStatus
    exit_reason: str | None = None
    # Monotonic time of the last change, so a caller can tell an event from a re-read.
    since: float = 0.0
    # Set while this agent shuts the VM down: its SHUTDOWN/STOPPED events are ours.
    shutdown_requested: bool = False

    def report(self) -> dict:
        data = asdict(self)
        data["status"] = self.status.value
        del data["since"], data["shutdown_requested"]
        if self.exit_reason is None:
            del data["exit_reason"]
        return data


def event_status(event: int, detail: int, *, shutdown_requested: bool = False
                 ) -> tuple[VmStatus, str | None] | None:
    """What a lifecycle event means for the VM: (status, exit reason), or None for no change."""
    if event == STARTED:
        return VmStatus.UP, None
    if event == SUSPENDED:
        return (VmStatus.MIGRATING_FROM if detail in _SUSPENDED_MIGRATION
                else VmStatus.PAUSED), None
    if event == RESUMED:
        return VmStatus.UP, None
    if event == SHUTDOWN:
        return VmStatus.POWERING_DOWN, None
    if event == STOPPED:
        if detail == 0:  # SHUTDOWN: the guest OS powered off
            return VmStatus.DOWN, ADMIN_SHUTDOWN if shutdown_requested else USER_SHUTDOWN
        return VmStatus.DOWN, _STOPPED_REASONS.get(detail, "unknown")
    if event == CRASHED:
        return VmStatus.DOWN, "crashed"
    if event == PMSUSPENDED:
        return VmStatus.SUSPENDED, None
    return None  # DEFINED, UNDEFINED: the VM's status does not change


class Registry:
    """VM id -> VmRecord, guarded by one lock (events arrive on the event-loop thread).

    ``listener(record)`` hears of every change of a VM's status or exit reason
    (the event stream, engine_lib.agent.event_stream). It is called under the
    lock, so it hears changes in the order they happened; it must be quick and
    must not call back into the registry.
    """

    def __init__(self, listener: Callable[[VmRecord], None] | None = None) -> None:
        self._vms: dict[str, VmRecord] = {}
        self._lock = threading.Lock()
        self._listener = listener

    def _changed(self, record: VmRecord, before: tuple | None) -> None:
        if self._listener is not None and before != (record.status, record.exit_reason):
            self._listener(_copy(record))

    def set(self, vm_id: str, name: str, status: VmStatus,
            exit_reason: str | None = None) -> VmRecord:
        """Record a status the agent knows first-hand (it just did or read it)."""
        with self._lock:
            record = self._vms.get(vm_id)
            before = None if record is None else (record.status, record.exit_reason)
            if record is None:
                record = self._vms[vm_id] = VmRecord(vm_id, name, status)
            record.name = name or record.name
            record.status = status
            record.exit_reason = exit_reason if status == VmStatus.DOWN else None
            record.since = time.monotonic()
            if status == VmStatus.DOWN:
                record.shutdown_requested = False
            self._changed(record, before)
            return _copy(record)

    def on_event(self, vm_id: str, event: int, detail: int) -> VmRecord | None:
        """Apply a lifecycle event to a VM we track; events of other domains are ignored."""
        with self._lock:
            record = self._vms.get(vm_id)
            if record is None:
                return None
            change = event_status(event, detail, shutdown_requested=record.shutdown_requested)
            if change is None:
                return _copy(record)
            if record.status == VmStatus.DOWN == change[0]:
                return _copy(record)  # the first word on why it stopped is the right one
            before = (record.status, record.exit_reason)
            record.status, record.exit_reason = change
            record.since = time.monotonic()
            if record.status == VmStatus.DOWN:
                record.shutdown_requested = False
            self._changed(record, before)
            return _copy(record)

    def request_shutdown(self, vm_id: str, requested: bool) -> None:
        """Mark (or unmark) a shutdown this agent asked for."""
        with self._lock:
            record = self._vms.get(vm_id)
            if record is not None:
                before = (record.status, record.exit_reason)
                record.shutdown_requested = requested
                if requested and record.status == VmStatus.UP:
                    record.status = VmStatus.POWERING_DOWN
                elif not requested and record.status == VmStatus.POWERING_DOWN:
                    record.status = VmStatus.UP
                self._changed(record, before)

    def get(self, vm_id: str) -> VmRecord | None:
        with self._lock:
            record = self._vms.get(vm_id)
            return _copy(record) if record else None

    def remove(self, vm_id: str) -> None:
        with self._lock:
            self._vms.pop(vm_id, None)

    def all(self) -> list[VmRecord]:
        with self._lock:
            return [_copy(record) for record in self._vms.values()]

    def __contains__(self, vm_id: str) -> bool:
        with self._lock:
            return vm_id in self._vms


def _copy(record: VmRecord) -> VmRecord:
    return VmRecord(**asdict(record))
