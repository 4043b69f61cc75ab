"""How a device is named between the engine's database and the live domain.

Every device the engine renders carries ``<alias name='ua-<device uuid>'/>``
(libvirt's rule for user aliases): the stable key for hotplug, unplug and the
engine's device matching.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

ALIAS_PREFIX = "ua-"
# The virtio-serial channel qemu-guest-agent listens on.
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


def device_alias(device: ET.Element) -> str:
    node = device.find("alias")
    return node.get("name", "") if node is not None else ""


def find_by_alias(domain_xml: str, alias: str) -> ET.Element | None:
    """The live device with this alias, or None (unplugged, or never there)."""
    root = ET.fromstring(domain_xml)
    devices = root.find("devices")
    if devices is None:
        return None
    for device in devices:
        if device_alias(device) == alias:
            return device
    return None
