"""Device XML for hotplug and unplug: check it, resolve its placeholders, find it by alias.

The engine sends one ``<disk>`` or ``<interface>`` element, rendered like the
devices of a domain (placeholders for host paths, a ``ua-`` alias it chose).
The alias is how the device is found again (unplug, and the engine's device
matching), so a device without one is refused rather than plugged anonymously.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from engine_lib.agent import domxml
from engine_lib.protocol.devices import ALIAS_PREFIX, device_alias
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.protocol.metadata import VolumeRef

KINDS = ("disk", "interface")


def parse_device(xml: str) -> ET.Element:
    """The device element; InvalidSpec("xml", ...) naming what is wrong."""
    try:
        device = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InvalidSpec("xml", f"not well-formed XML ({exc})") from None
    if device.tag not in KINDS:
        raise InvalidSpec("xml", f"<{device.tag}> cannot be hotplugged here; "
                                 f"expected one of {', '.join(f'<{k}>' for k in KINDS)}")
    alias = device_alias(device)
    if not alias.startswith(ALIAS_PREFIX):
        raise InvalidSpec("xml", f"the device needs <alias name='{ALIAS_PREFIX}...'/> "
                                 f"(got '{alias}'): it is how it is found again")
    return device


def resolve(device: ET.Element, roots: dict[str, str], storage_domains: dict[str, str],
            luns: dict[str, str] | None = None,
            volume: VolumeRef | None = None,
            chain: list[VolumeRef] | None = None) -> tuple[str, list[str]]:
    """Replace every placeholder in the device; return (XML, storage paths it uses).

    The same rules as a whole domain (engine_lib.agent.domxml.resolve_paths):
    ``luns`` are the registered LUNs the engine sent with the device, ``chain``
    the volumes under ``volume`` (its nested <backingStore>).
    """
    volumes = ([volume] if volume is not None else []) + list(chain or [])
    found = domxml.resolve_paths(device, roots, storage_domains, luns or {}, volumes)
    domxml.pin_backing_chains(device, set(found.get("storage", [])))
    return ET.tostring(device, encoding="unicode"), found.get("storage", [])
