"""Correlate the devices libvirt runs with the VM's devices in the database.

Pure: takes device records (ORM rows or anything with the same attributes)
and the parsed live XML, returns what matched, what is new and what is gone,
each with the reason, and changes nothing. ``apply`` writes the result.

The rules, in order (oVirt 4.2's engine-side device matching):
1. a ``ua-<id>`` alias names the database device;
2. a device a VM has only once (balloon, RNG, watchdog, sound, graphics, ...)
   matches the VM's one device of that type; the console is the serial
   port's other face and folds into it;
3. a device recorded earlier as unmanaged matches by libvirt's alias, then by
   its address (then, for one with neither, by its attributes);
4. anything else is new and unmanaged: added by libvirt (controllers, PCI
   roots, default USB, input) or hotplugged behind the engine's back;
5. a database device libvirt no longer reports is unplugged if it is ours
   (managed) and deleted if libvirt had added it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine_lib.devices.live import LiveDevice
from engine_lib.protocol.devices import ALIAS_PREFIX

_PREFIX_LEN = len(ALIAS_PREFIX)
# Types a VM has at most once: a live one without our alias is still that device.
ONCE_PER_VM = frozenset({"memballoon", "rng", "watchdog", "sound", "graphics", "video", "tpm",
                         "serial"})
# What the matching reads of every database device (see _columns).
_MATCHED_COLUMNS = frozenset({"id", "type", "managed", "alias", "spec", "address"})
# Devices a user adds; one without our alias was hotplugged outside the engine.
USER_KINDS = frozenset({"disk", "cdrom", "interface", "hostdev"})
# What an unmanaged device is looked up by: its type, then its MAC and address or attributes.
_Key = tuple[Hashable, ...]


@dataclass(slots=True)
class Matched:
    device: Any           # the database device
    live: LiveDevice
    reason: str


@dataclass(slots=True)
class New:
    live: LiveDevice
    reason: str


@dataclass(slots=True)
class Gone:
    device: Any
    action: str           # "unplugged" (ours) or "deleted" (libvirt's)
    reason: str


@dataclass(slots=True)
class Correlation:
    matched: list[Matched] = field(default_factory=list)
    unmanaged_new: list[New] = field(default_factory=list)
    unplugged: list[Gone] = field(default_factory=list)
    # Live elements that are another face of a matched device (the serial console).
    folded: list[Matched] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form ``kestrel devices match`` prints."""
        return {
            "matched": [{"id": m.device.id, "type": m.device.type, "name": m.device.name,
                         "managed": m.device.managed is not False, "alias": m.live.alias,
                         "address": m.live.address, "guest_name": m.live.guest_name,
                         "reason": m.reason} for m in self.matched],
            "unmanaged_new": [{"type": n.live.kind, "alias": n.live.alias,
                               "address": n.live.address, "spec": unmanaged_spec(n.live),
                               "reason": n.reason} for n in self.unmanaged_new],
            "unplugged": [{"id": g.device.id, "type": g.device.type, "name": g.device.name,
                           "managed": g.device.managed is not False, "action": g.action,
                           "reason": g.reason} for g in self.unplugged],
            "folded": [{"id": f.device.id, "type": f.live.kind, "alias": f.live.alias,
                        "reason": f.reason} for f in self.folded],
        }


def unmanaged_spec(live: LiveDevice) -> dict[str, str]:
    """What identifies a device libvirt added: its attributes, model and MAC."""
    spec = dict(live.attrs)
    if live.model:
        spec["model"] = live.model
    if live.tag == "interface":
        spec["mac"] = live.mac  # the cluster's MAC pool counts every NIC's "mac"
    return spec


def _address_key(kind: str, mac: str, address: Mapping[str, str]) -> _Key | None:
    # The MAC is part of a NIC's identity: another NIC in a freed slot is another device.
    return (kind, mac, *sorted(address.items())) if address else None


def _attrs_key(kind: str, spec: Mapping[str, Any]) -> _Key:
    """For devices with neither alias nor address (``<audio id='1' type='none'/>``)."""
    return (kind, *sorted((k, str(v)) for k, v in spec.items()))


def correlate(devices: Iterable[Any], live: list[LiveDevice]) -> Correlation:
    """Correlate; the rules are in the module docstring.

    Hot path (every changed VM of every poll): rows are read once each, and what
    was matched is tracked by object identity, not by reading ORM attributes again.
    """
    result = Correlation()
    ours: dict[str, Any] = {}
    singles: dict[str, list[Any]] = {}
    theirs: list[tuple[Any, dict[str, Any]]] = []  # (row, its columns)
    theirs_by_alias: dict[tuple[str, str, str], Any] = {}
    for device in devices:
        row = _columns(device)
        if row["managed"] is not False:
            ours[row["id"]] = device
            type_ = row["type"]
            if type_ in ONCE_PER_VM:
                singles.setdefault(type_, []).append(device)
        else:
            theirs.append((device, row))
            alias = row["alias"]
            if alias:
                theirs_by_alias[row["type"], (row["spec"] or {}).get("mac", ""), alias] = device
    by_address: dict[_Key, Any] | None = None  # built on first need: libvirt's devices
    by_attrs: dict[_Key, Any] | None = None     # nearly always keep their alias
    seen: set[int] = set()  # id() of every matched row

    for element in live:
        alias = element.alias
        device_id = alias[_PREFIX_LEN:] if alias.startswith(ALIAS_PREFIX) else None
        if device_id is not None:
            device = ours.get(device_id)
            if device is not None:
                if id(device) in seen:
                    result.folded.append(Matched(device, element, f"shares alias {alias} "
                                                 f"with the {device.type}"))
                else:
                    seen.add(id(device))
                    result.matched.append(Matched(device, element, "ua- alias"))
                continue
        kind = element.kind
        if kind == "console":
            serial = singles.get("serial")
            if serial:
                result.folded.append(Matched(serial[0], element,
                                             "the console of the serial port"))
                continue
        candidates = singles.get(kind)
        if candidates is not None and len(candidates) == 1 and id(candidates[0]) not in seen:
            seen.add(id(candidates[0]))
            result.matched.append(Matched(candidates[0], element, f"the VM's only {kind}"))
            continue
        device = theirs_by_alias.get((kind, element.mac, alias)) if alias else None
        reason = "unmanaged, same libvirt alias"
        if device is None or id(device) in seen:
            device = None
            if element.address:
                if by_address is None:
                    by_address = _index_by_address(theirs)
                key = _address_key(kind, element.mac, element.address)  # not None: an address
                device = by_address.get(key) if key is not None else None
                reason = "unmanaged, same address"
            elif not alias:
                if by_attrs is None:
                    by_attrs = {_attrs_key(row["type"], row["spec"] or {}): d
                                for d, row in theirs if not row["alias"] and not row["address"]}
                device = by_attrs.get(_attrs_key(kind, unmanaged_spec(element)))
                reason = "unmanaged, same attributes"
        if device is not None and id(device) not in seen:
            seen.add(id(device))
            result.matched.append(Matched(device, element, reason))
            continue
        result.unmanaged_new.append(New(element, _why_new(element, device_id)))

    for device in ours.values():
        if id(device) not in seen and device.plugged is not False:
            result.unplugged.append(Gone(device, "unplugged",
                                         "not in the live XML: unplugged from the running VM"))
    for device, _ in theirs:
        if id(device) not in seen:
            result.unplugged.append(Gone(device, "deleted",
                                         "not in the live XML: an unmanaged device is gone"))
    return result


def _columns(device: Any) -> dict[str, Any]:
    """The columns matching reads of every row, as a mapping.

    A loaded ORM row keeps its column values in its instance dict; reading them
    there skips SQLAlchemy's instrumented attributes, which cost ten times as much
    (650 vs 64 ns for three columns, measured) and were a third of matching. A row
    with an expired or unloaded column, or a record without a ``__dict__``, goes
    through its attributes (which load what is missing).
    """
    values: dict[str, Any] | None = getattr(device, "__dict__", None)
    if values is not None and values.keys() >= _MATCHED_COLUMNS:
        return values
    return {name: getattr(device, name) for name in _MATCHED_COLUMNS}


def _index_by_address(theirs: list[tuple[Any, dict[str, Any]]]) -> dict[_Key, Any]:
    found: dict[_Key, Any] = {}
    for device, row in theirs:
        key = _address_key(row["type"], (row["spec"] or {}).get("mac", ""),
                           row["address"] or {})
        if key is not None:
            found[key] = device
    return found


def _why_new(element: LiveDevice, device_id: str | None) -> str:
    if device_id is not None:
        return f"alias {element.alias} names no device of this VM"
    if element.kind in USER_KINDS:
        return "hotplugged outside the engine (no ua- alias)"
    return "added by libvirt"
