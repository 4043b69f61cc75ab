"""A hash of each VM's devices, so the engine reads the live XML only when they changed.

The hash covers what identifies a device (element, alias, address, MAC, target),
not its state (a CD tray, a block job), so it changes on hotplug and unplug —
through the agent or through libvirt directly — and never otherwise.

Computing it needs the live XML, so it is cached per VM and dropped when
libvirt says the VM's devices may have changed: device added or removed, and
any lifecycle event (a start or an incoming migration brings a new domain).
A stats poll of many VMs then costs a dictionary lookup per VM.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import xml.etree.ElementTree as ET

import libvirt

log = logging.getLogger("kestrel.agent.devices_hash")

_IDENTITY_CHILDREN = {"alias": "name", "mac": "address", "target": "dev"}


def devices_hash(domain_xml: str) -> str:
    """Hex digest over the identity of every device in a domain XML."""
    devices = ET.fromstring(domain_xml).find("devices")
    digest = hashlib.blake2b(digest_size=16)
    for element in devices if devices is not None else ():
        if element.tag == "emulator":
            continue
        parts = [element.tag, element.get("type", ""), element.get("device", "")]
        for child in element:
            if child.tag == "address":
                parts.extend(f"{k}={v}" for k, v in sorted(child.attrib.items()))
            elif child.tag in _IDENTITY_CHILDREN:
                parts.append(f"{child.tag}={child.get(_IDENTITY_CHILDREN[child.tag], '')}")
        digest.update("\x1f".join(parts).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


class DevicesHashes:
    """Per-VM cache of ``devices_hash``, invalidated by libvirt events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hashes: dict[str, str] = {}
        # Bumped on every invalidation, so a hash computed from XML read before an
        # event is not cached after it.
        self._generations: dict[str, int] = {}

    def watch(self, conn: libvirt.virConnect) -> list[int]:
        """Register the device callbacks on a (new) connection; returns their ids.

        Lifecycle events reach ``invalidate`` through the agent's own lifecycle
        callback (libvirt refuses a second one on the same connection).
        """
        with self._lock:
            self._hashes.clear()  # events may have been missed while disconnected

        def on_device(_conn, dom, _alias, _opaque):
            self.invalidate(dom.UUIDString())

        return [conn.domainEventRegisterAny(None, event_id, callback, None)
                for event_id, callback in (
                    (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, on_device),
                    (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, on_device))]

    def invalidate(self, vm_id: str) -> None:
        with self._lock:
            self._hashes.pop(vm_id, None)
            self._generations[vm_id] = self._generations.get(vm_id, 0) + 1

    def get(self, dom: libvirt.virDomain) -> str | None:
        """The VM's devices hash; None if libvirt no longer has the domain."""
        vm_id = dom.UUIDString()
        with self._lock:
            cached = self._hashes.get(vm_id)
            generation = self._generations.get(vm_id, 0)
        if cached is not None:
            return cached
        try:
            value = devices_hash(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            log.debug("no devices hash for %s: %s", vm_id, exc.get_error_message())
            return None
        with self._lock:
            if self._generations.get(vm_id, 0) == generation:
                self._hashes[vm_id] = value
        return value
