"""libvirt states map onto the statuses the engine reports."""

from __future__ import annotations

import libvirt
import pytest

from engine_lib.agent.states import VmStatus, vm_status


@pytest.mark.parametrize("state, reason, expected", [
    (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED, VmStatus.UP),
    (libvirt.VIR_DOMAIN_BLOCKED, 0, VmStatus.UP),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, VmStatus.PAUSED),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR, VmStatus.PAUSED),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, VmStatus.POWERING_UP),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION, VmStatus.MIGRATING_FROM),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_SAVE, VmStatus.SAVING_STATE),
    (libvirt.VIR_DOMAIN_SHUTDOWN, 0, VmStatus.POWERING_DOWN),
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, VmStatus.DOWN),
    (libvirt.VIR_DOMAIN_CRASHED, 0, VmStatus.DOWN),
    (libvirt.VIR_DOMAIN_PMSUSPENDED, 0, VmStatus.SUSPENDED),
    (libvirt.VIR_DOMAIN_NOSTATE, 0, VmStatus.UNKNOWN),
])
def test_libvirt_state_to_vm_status(state, reason, expected):
    assert vm_status(state, reason) is expected


def test_what_only_the_agent_knows_wins_over_running():
    running = libvirt.VIR_DOMAIN_RUNNING
    assert vm_status(running, 1, powering_down=True) is VmStatus.POWERING_DOWN
    assert vm_status(running, 1, migrating=True) is VmStatus.MIGRATING_FROM
    assert vm_status(libvirt.VIR_DOMAIN_SHUTOFF, 1, powering_down=True) is VmStatus.DOWN
