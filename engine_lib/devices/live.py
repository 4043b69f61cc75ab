"""Read the devices of a live domain XML: what libvirt runs, as flat records.

The standard library's C parser builds the tree (measured: lxml parses faster
but its per-element proxies make the same walk slower); each record keeps only
what matching and the database need (alias, address, guest name, MAC, model).

``parse`` reads any document and explains what is wrong with a bad one (the
``kestrel devices match`` CLI). ``parse_devices`` is the monitor's path for XML
straight from libvirt: it cuts ``<devices>`` into one block of text per device
and parses only the blocks it has not seen before (see ``DeviceBlocks``).
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from typing import Any

from engine_lib.protocol.devices import ALIAS_PREFIX
from engine_lib.protocol.errors import InvalidSpec

# Children of <devices> that are not devices.
_NOT_DEVICES = frozenset({"emulator"})
# libvirt indents each child of <devices> by four spaces, and nothing else in the
# section starts a line that way: deeper elements are indented further, and a "<"
# in user text is escaped.
_DEVICE_START = "\n    <"
_UNSEEN = object()


class LiveDevice:
    """One device as libvirt runs it (a plain slotted class: thousands are made per cycle)."""

    __slots__ = ("tag", "kind", "alias", "address", "guest_name", "attrs", "mac", "model")

    def __init__(self, tag: str, kind: str, attrs: dict[str, str], alias: str = "",
                 address: dict[str, str] | None = None, guest_name: str = "", mac: str = "",
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
    else (no such element, text laid out otherwise, a fragment that does not parse)
    takes the strict path.
    """
    start, end = domain_xml.rfind("<devices>"), domain_xml.rfind("</devices>")
    if 0 <= start < end:
        devices = BLOCKS.read(domain_xml[start + len("<devices>"):end])
        if devices is not None:
            return devices
    return parse(domain_xml)[1]


class DeviceBlocks:
    """Devices already parsed, by the exact text libvirt wrote for each.

    libvirt formats a device the same way every time, so when one NIC of a VM
    changes only that NIC is parsed again, and the controllers libvirt adds to
    every VM of a cluster (byte for byte the same) are parsed once. A cached
    record is shared by every VM whose XML holds that text: never modify one.
    Bounded: emptied when full (a cleared cache only costs parsing again).
    """

    def __init__(self, capacity: int = 8192):
        self.capacity = capacity
        self._parsed: dict[str, LiveDevice | None] = {}  # None: a child that is no device
        self._lock = threading.Lock()

    def clear(self) -> None:
        self._parsed.clear()

    def read(self, section: str) -> list[LiveDevice] | None:
        """The devices in the text between ``<devices>`` and ``</devices>``.

        None when the text is not laid out as libvirt writes it or does not parse.
        """
        pieces = section.rstrip().split(_DEVICE_START)
        if pieces[0]:
            return None
        # Devices (LiveDevice, or None for a child that is no device), and the blocks
        # (str) still to parse: _parse_unseen replaces each block by its device.
        found: list[Any] = []
        unseen: list[int] = []    # their positions in ``found``
        parsed = self._parsed
        count, index = len(pieces), 1
        while index < count:
            block = pieces[index]
            index += 1
            if index < count and pieces[index][:1] == "/":  # the element's end tag
                block = block + _DEVICE_START + pieces[index]
                index += 1
            device = parsed.get(block, _UNSEEN)
            if device is _UNSEEN:
                unseen.append(len(found))
                device = block
            found.append(device)
        if unseen and not self._parse_unseen(found, unseen):
            return None
        return [device for device in found if device is not None]

    def _parse_unseen(self, found: list[Any], unseen: list[int]) -> bool:
        """Parse the blocks at ``unseen`` in one go; replace them by their devices."""
        blocks = [found[position] for position in unseen]
        try:
            elements = list(ET.fromstring("<devices><" + "<".join(blocks) + "</devices>"))
        except ET.ParseError:
            return False
        if len(elements) != len(blocks):
            return False
        devices = []
        for block, element in zip(blocks, elements):
            tag = element.tag
            if not block.startswith(tag) or block[len(tag):len(tag) + 1] not in (" ", ">", "/"):
                return False  # the cut did not fall between devices
            devices.append(_device(element))
        with self._lock:
            if len(self._parsed) + len(blocks) > self.capacity:
                self._parsed.clear()
            self._parsed.update(zip(blocks, devices))
        for position, device in zip(unseen, devices):
            found[position] = device
        return True


BLOCKS = DeviceBlocks()


def _devices(devices: ET.Element) -> list[LiveDevice]:
    found = []
    for element in devices:
        device = _device(element)
        if device is not None:
            found.append(device)
    return found


def _device(element: ET.Element) -> LiveDevice | None:
    """The record of one child of ``<devices>``; None for one that is no device."""
    tag = element.tag
    if tag in _NOT_DEVICES:
        return None
    attrs = element.attrib
    if tag == "memballoon" and attrs.get("model") == "none":
        return None  # "no balloon" is written as a balloon of model none
    # The parsed tree is thrown away: its attribute dicts are kept as they are (and
    # shared through DeviceBlocks, so nothing may modify them).
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
    return device
