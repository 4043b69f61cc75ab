"""Read the devices of a live domain XML: what libvirt runs, as flat records.

One pass over ``<devices>`` with the standard library's C parser; each record
keeps only what matching and the database need (alias, address, guest name,
MAC, model), so reading 20 devices costs little more than parsing them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from engine_lib.errors import InvalidSpec

ALIAS_PREFIX = "ua-"
# Children of <devices> that are not devices.
_NOT_DEVICES = frozenset({"emulator"})


@dataclass(slots=True)
class LiveDevice:
    tag: str              # libvirt's element name: disk, interface, controller, ...
    kind: str             # our device type: a <disk device='cdrom'> is a cdrom
    alias: str = ""
    address: dict = field(default_factory=dict)
    guest_name: str = ""  # a disk's target (vda); what the guest calls it
    attrs: dict = field(default_factory=dict)  # the element's own attributes
    mac: str = ""
    model: str = ""

    @property
    def user_alias_id(self) -> str | None:
        """The device id in a ``ua-<id>`` alias, None for libvirt's own aliases."""
        return self.alias[len(ALIAS_PREFIX):] if self.alias.startswith(ALIAS_PREFIX) else None


def parse(domain_xml: str) -> tuple[str, list[LiveDevice]]:
    """(domain uuid, devices) of a live domain XML."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as err:
        raise InvalidSpec("live", f"is not well-formed XML ({err})") from None
    if root.tag != "domain":
        raise InvalidSpec("live", f"is a <{root.tag}> document, not a libvirt <domain>")
    devices = root.find("devices")
    return root.findtext("uuid", ""), _devices(devices) if devices is not None else []


def _devices(devices: ET.Element) -> list[LiveDevice]:
    found = []
    for element in devices:
        tag = element.tag
        if tag in _NOT_DEVICES:
            continue
        attrs = element.attrib
        if tag == "memballoon" and attrs.get("model") == "none":
            continue  # "no balloon" is written as a balloon of model none
        device = LiveDevice(tag, tag, attrs=dict(attrs))
        if tag == "disk" and attrs.get("device") == "cdrom":
            device.kind = "cdrom"
        for child in element:
            name = child.tag
            if name == "alias":
                device.alias = child.get("name", "")
            elif name == "address":
                device.address = dict(child.attrib)
            elif name == "target":
                if tag == "disk":
                    device.guest_name = child.get("dev", "")
            elif name == "mac":
                device.mac = child.get("address", "")
            elif name == "model":
                device.model = child.get("type", "")
        found.append(device)
    return found
