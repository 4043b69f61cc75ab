"""Read the devices of a live domain XML: what libvirt runs, as flat records.

One pass over ``<devices>`` with the standard library's C parser (measured: lxml
parses faster but its per-element proxies make the same walk slower); each record
keeps only what matching and the database need (alias, address, guest name,
MAC, model), so reading 20 devices costs little more than parsing them.

``parse`` reads any document and explains what is wrong with a bad one (the
``kestrel devices match`` CLI); ``parse_devices`` is the monitor's path for XML
straight from libvirt and parses only the ``<devices>`` element — about 80% of
the text, and the part that changes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from engine_lib.errors import InvalidSpec

ALIAS_PREFIX = "ua-"
# Children of <devices> that are not devices.
_NOT_DEVICES = frozenset({"emulator"})
# A line break and the indentation after it.
_INDENTATION = re.compile(r"\n *")


class LiveDevice:
    """One device as libvirt runs it (a plain slotted class: thousands are made per cycle)."""

    __slots__ = ("tag", "kind", "alias", "address", "guest_name", "attrs", "mac", "model")

    def __init__(self, tag: str, kind: str, attrs: dict, alias: str = "",
                 address: dict | None = None, guest_name: str = "", mac: str = "",
                 model: str = ""):
        self.tag = tag              # libvirt's element name: disk, interface, controller, ...
        self.kind = kind            # our device type: a <disk device='cdrom'> is a cdrom
        self.attrs = attrs          # the element's own attributes
        self.alias = alias
        self.address = address if address is not None else {}
        self.guest_name = guest_name  # a disk's target (vda): what the guest calls it
        self.mac = mac
        self.model = model

    def __repr__(self) -> str:
        return f"LiveDevice({self.kind}, alias={self.alias!r}, address={self.address!r})"

    @property
    def user_alias_id(self) -> str | None:
        """The device id in a ``ua-<id>`` alias, None for libvirt's own aliases."""
        return self.alias[len(ALIAS_PREFIX):] if self.alias.startswith(ALIAS_PREFIX) else None


def parse(domain_xml: str | bytes) -> tuple[str, list[LiveDevice]]:
    """(domain uuid, devices) of a live domain XML."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as err:
        raise InvalidSpec("live", f"is not well-formed XML ({err})") from None
    if root.tag != "domain":
        raise InvalidSpec("live", f"is a <{root.tag}> document, not a libvirt <domain>")
    devices = root.find("devices")
    return root.findtext("uuid", ""), _devices(devices) if devices is not None else []


def parse_devices(domain_xml: str) -> list[LiveDevice]:
    """The devices of a live domain XML as libvirt formats it.

    libvirt writes ``<devices>`` once, without attributes, as a child of
    ``<domain>``, and nothing after it can hold that tag (user text is escaped), so
    the last ``<devices>`` start tag and the last end tag bound the element. Anything
    else (no such element, a fragment that does not parse) takes the strict path.
    """
    start, end = domain_xml.rfind("<devices>"), domain_xml.rfind("</devices>")
    if 0 <= start < end:
        # Dropping libvirt's indentation first costs less than the whitespace text
        # objects the parser would make of it; the walk reads only attributes, and
        # libvirt writes none with a line break in it.
        section = _INDENTATION.sub("", domain_xml[start:end + len("</devices>")])
        try:
            return _devices(ET.fromstring(section))
        except ET.ParseError:
            pass
    return parse(domain_xml)[1]


def _devices(devices: ET.Element) -> list[LiveDevice]:
    found = []
    for element in devices:
        tag = element.tag
        if tag in _NOT_DEVICES:
            continue
        attrs = element.attrib
        if tag == "memballoon" and attrs.get("model") == "none":
            continue  # "no balloon" is written as a balloon of model none
        # The parsed tree is thrown away: its attribute dicts can be kept as they are.
        device = LiveDevice(tag, "cdrom" if tag == "disk" and attrs.get("device") == "cdrom"
                            else tag, attrs)
        for child in element:
            name = child.tag
            if name == "alias":
                device.alias = child.get("name", "")
            elif name == "address":
                device.address = child.attrib
            elif name == "target":
                if tag == "disk":
                    device.guest_name = child.get("dev", "")
            elif name == "mac":
                device.mac = child.get("address", "")
            elif name == "model":
                device.model = child.get("type", "")
        found.append(device)
    return found
