"""libvirt domain states -> the VM statuses the engine reports (oVirt's names).

libvirt says what QEMU is doing (state + reason); the engine speaks of what
the VM is doing. Pure, and written with libvirt's numeric values so it loads
without libvirt-python (the numbers are libvirt's stable ABI).
"""

from __future__ import annotations

from engine_lib.protocol.statuses import VmStatus

# virDomainState
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)
STATE_NAMES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
               "pmsuspended")

# virDomainPausedReason values that mean something other than "paused".
_PAUSED_REASONS = {
    2: VmStatus.MIGRATING_FROM,    # MIGRATION: paused for offline/final migration phase
    3: VmStatus.SAVING_STATE,      # SAVE
    8: VmStatus.POWERING_DOWN,     # SHUTTING_DOWN
    11: VmStatus.POWERING_UP,      # STARTING_UP
    12: VmStatus.MIGRATING_FROM,   # POSTCOPY
}
# virDomainShutoffReason names, for the engine's exit reason.
SHUTOFF_REASONS = ("unknown", "shutdown", "destroyed", "crashed", "migrated", "saved",
                   "failed", "from-snapshot", "daemon")


def vm_status(state: int, reason: int, *, migrating: bool = False,
              powering_down: bool = False) -> VmStatus:
    """Map a libvirt (state, reason) pair to a VM status.

    ``migrating`` and ``powering_down`` carry what only the agent knows: an
    outgoing migration or a graceful shutdown it started and is waiting for.
    """
    if state in (RUNNING, BLOCKED):
        if migrating:
            return VmStatus.MIGRATING_FROM
        return VmStatus.POWERING_DOWN if powering_down else VmStatus.UP
    if state == PAUSED:
        return _PAUSED_REASONS.get(reason, VmStatus.PAUSED)
    if state == SHUTDOWN:
        return VmStatus.POWERING_DOWN
    if state in (SHUTOFF, CRASHED):
        return VmStatus.DOWN
    if state == PMSUSPENDED:
        return VmStatus.SUSPENDED
    return VmStatus.UNKNOWN


def status_and_exit_reason(state: int, reason: int) -> tuple[VmStatus, str | None]:
    """The VM status of a libvirt (state, reason) pair and, for a VM that is Down, why.

    The exit reason is libvirt's shutoff reason by name ("destroyed", "saved",
    ...), "crashed", or "unknown"; the agent replaces it where it knows better.
    """
    status = vm_status(state, reason)
    exit_reason = None
    if status == VmStatus.DOWN:
        exit_reason = (SHUTOFF_REASONS[reason]
                       if state == SHUTOFF and 0 <= reason < len(SHUTOFF_REASONS)
                       else "crashed" if state == CRASHED else "unknown")
    return status, exit_reason


def state_name(state: int) -> str:
    return STATE_NAMES[state] if 0 <= state < len(STATE_NAMES) else f"state-{state}"
