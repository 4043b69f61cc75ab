"""The status vocabularies of hosts and VMs (oVirt's names), one definition each.

Both are ``StrEnum``: a member equals its string, so statuses read back from
the database or from JSON compare equal to the members.
"""

from __future__ import annotations

from enum import StrEnum, nonmember


class VmStatus(StrEnum):
    DOWN = "Down"
    WAIT_FOR_LAUNCH = "WaitForLaunch"
    POWERING_UP = "PoweringUp"
    UP = "Up"
    PAUSED = "Paused"
    POWERING_DOWN = "PoweringDown"
    UNKNOWN = "Unknown"
    # Live migration: the VM runs on its source until it is Up on the destination.
    MIGRATING_FROM = "MigratingFrom"
    MIGRATING_TO = "MigratingTo"
    # Hibernation. Suspended = memory saved on a storage domain, no host.
    SAVING_STATE = "SavingState"
    RESTORING_STATE = "RestoringState"
    SUSPENDED = "Suspended"

    # A VM in one of these holds resources on its host (oVirt's pending and
    # committed resources): the scheduler must count it.
    ACTIVE = nonmember(frozenset({
        WAIT_FOR_LAUNCH, POWERING_UP, UP, PAUSED, POWERING_DOWN, UNKNOWN,
        MIGRATING_FROM, MIGRATING_TO, SAVING_STATE, RESTORING_STATE}))
    # Its host is starting or restoring it: it holds its claim until the host says
    # it runs or not.
    LAUNCHING = nonmember(frozenset({WAIT_FOR_LAUNCH, RESTORING_STATE}))


class HostStatus(StrEnum):
    INSTALLING = "Installing"
    UP = "Up"
    CONNECTING = "Connecting"
    NON_RESPONSIVE = "NonResponsive"
    MAINTENANCE = "Maintenance"
    # Its VMs are migrating away; the scheduler already places nothing here.
    PREPARING_FOR_MAINTENANCE = "PreparingForMaintenance"
    # A reinstall failed; the host stays out until one succeeds.
    INSTALL_FAILED = "InstallFailed"

    # An operator put the host here: a heartbeat or re-registering does not make it Up.
    HELD = nonmember(frozenset({MAINTENANCE, PREPARING_FOR_MAINTENANCE}))


class PowerSavingState(StrEnum):
    """How far power saving got with a host it powers down or up (``hosts.power_saving``)."""

    NONE = ""  # the engine leaves its power alone
    PARKED = "maintenance"  # in Maintenance, switched off once the grace period ends
    STOPPING = "stopping"  # its fence agent is switching it off: no activation meanwhile
    OFF = "off"  # switched off, confirmed by its fence agent's status
    STARTING = "starting"  # switched on for capacity: activated once its agent answers
