"""Read a live domain XML back onto the VM's devices.

The ``ua-<device id>`` alias is the stable key between the database and what
libvirt runs: for each device of ours found in the live XML, the engine stores
the address libvirt assigned (PCI slot, drive unit, serial port) and the
guest-visible name. Correlating devices libvirt added on its own, and devices
that vanished, grows from here into full device matching.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from engine_lib.model import Vm

ALIAS_PREFIX = "ua-"


def live_devices(domain_xml: str) -> dict[str, dict]:
    """Device id -> {"address": {...}, "target": ...} for every user-aliased device."""
    found: dict[str, dict] = {}
    devices = ET.fromstring(domain_xml).find("devices")
    if devices is None:
        return found
    for element in devices:
        alias = element.find("alias")
        name = alias.get("name", "") if alias is not None else ""
        if not name.startswith(ALIAS_PREFIX):
            continue
        address = element.find("address")
        target = element.find("target")
        found[name[len(ALIAS_PREFIX):]] = {
            "address": dict(address.attrib) if address is not None else {},
            "target": target.get("dev", "") if target is not None else "",
        }
    return found


def record_live(vm: Vm, domain_xml: str) -> None:
    live = live_devices(domain_xml)
    for device in vm.devices:
        reported = live.get(device.id)
        if reported is None:
            continue
        device.alias = device.user_alias
        address = {**reported["address"], **({"target": reported["target"]}
                                             if reported["target"] else {})}
        if device.address != address:
            device.address = address
