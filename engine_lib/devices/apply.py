"""Write a correlation onto the VM's device rows, and say what changed for the audit log."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from engine_lib.devices.live import LiveDevice
from engine_lib.devices.match import USER_KINDS, Correlation, unmanaged_spec
from engine_lib.model import DeviceType, Vm, VmDevice, new_id

# Unmanaged rows sort after every device of ours (positions are type rank * 1000 + index).
_UNMANAGED_POSITION = 100_000


def reported_address(live: LiveDevice) -> dict[str, str]:
    # The disk's target rides along in the address too (what users read since issue 3).
    # Always a copy: parsed devices are shared between VMs (live.DeviceBlocks).
    return {**live.address, "target": live.guest_name} if live.guest_name \
        else dict(live.address)


def _set(device: VmDevice, **values: Any) -> None:
    """Assign only what changed, so an unchanged device row is not written."""
    for key, value in values.items():
        if getattr(device, key) != value:
            setattr(device, key, value)


def apply(vm: Vm, correlation: Correlation) -> list[tuple[str, str]]:
    """Update ``vm.devices``; returns (severity, message) audit entries worth a user's eye.

    Devices libvirt adds at every start (controllers, input, ...) are summed up
    in one line; devices plugged or unplugged behind the engine's back are
    named one by one.
    """
    notes: list[tuple[str, str]] = []
    for match in correlation.matched:
        device, live = match.device, match.live
        values = dict(alias=live.alias, address=reported_address(live),
                      guest_name=live.guest_name, plugged=True)
        if device.managed is False:
            values["spec"] = unmanaged_spec(live)
        elif device.plugged is False:
            notes.append(("info", f"{_describe(device)} is plugged again ({match.reason})"))
        if device.type == DeviceType.DISK and device.managed is not False:
            # A domain runs with it, so its volume exists: from now on a start that
            # finds it missing must fail rather than create a blank one.
            values["volume_created"] = True
        _set(device, **values)
    added: Counter[str] = Counter()
    position = max((d.position for d in vm.devices), default=0)
    for new in correlation.unmanaged_new:
        live = new.live
        position = max(position + 1, _UNMANAGED_POSITION)
        device = VmDevice(id=new_id(), type=live.kind, name=None, position=position,
                          managed=False, plugged=True, spec=unmanaged_spec(live),
                          alias=live.alias, address=reported_address(live),
                          guest_name=live.guest_name)
        vm.devices.append(device)
        if live.kind in USER_KINDS or live.user_alias_id is not None:
            notes.append(("warning", f"picked up {_describe(device)} at "
                                     f"{_where(live.address)}: {new.reason}"))
        else:
            added[live.kind] += 1
    if added:
        summary = ", ".join(f"{count} {kind}" for kind, count in sorted(added.items()))
        notes.append(("info", f"recorded devices libvirt added: {summary}"))
    for gone in correlation.unplugged:
        device = gone.device
        if gone.action == "deleted":
            vm.devices.remove(device)
            if device.type in USER_KINDS:
                notes.append(("info", f"{_describe(device)} is gone: {gone.reason}"))
        else:
            device.plugged = False
            notes.append(("warning", f"{_describe(device)} marked unplugged: {gone.reason}"))
    return notes


def _describe(device: VmDevice) -> str:
    mac = (device.spec or {}).get("mac") if device.type == "interface" else None
    label = f" '{device.name}'" if device.name else ""
    ident = f" {mac}" if mac else ""
    owner = "" if device.managed is not False else "unmanaged "
    return f"{owner}{device.type}{label}{ident}"


def _where(address: Mapping[str, str]) -> str:
    if address.get("type") == "pci":
        return "pci {}:{}:{}.{}".format(*(address.get(k, "?").removeprefix("0x") for k in
                                          ("domain", "bus", "slot", "function")))
    return ", ".join(f"{k}={v}" for k, v in sorted(address.items())) or "no address"
