"""MAC address pools: ranges per cluster, lowest free address first.

A MAC is allocated once, stored with its NIC and never regenerated; a
re-run of the same playbook must not change a guest's MAC.
"""

from __future__ import annotations

from collections.abc import Iterable

import netaddr

from engine_lib.protocol.errors import InvalidSpec

# Locally administered, unicast (oVirt uses 56:6f:...; we keep a range of our own).
DEFAULT_RANGES = ("56:6f:4b:00:00:00-56:6f:4b:ff:ff:ff",)


def _parse(field: str, text: str) -> tuple[int, int]:
    first, sep, last = str(text).partition("-")
    try:
        start, end = int(netaddr.EUI(first.strip())), int(netaddr.EUI(last.strip()))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidSpec(field, f"'{text}' is not a range 'first-last' of MAC addresses") from None
    if not sep or start > end:
        raise InvalidSpec(field, f"'{text}' is not a range 'first-last' with first <= last")
    if start >> 40 & 1:
        raise InvalidSpec(field, f"'{text}' holds multicast addresses")
    return start, end


def _fmt(value: int) -> str:
    return str(netaddr.EUI(value, dialect=netaddr.mac_unix_expanded))


def normalize_ranges(field: str, ranges: Iterable[str]) -> list[str]:
    if isinstance(ranges, str) or not ranges:
        raise InvalidSpec(field, "must be a non-empty list of 'first-last' MAC ranges")
    out = []
    for index, text in enumerate(ranges):
        start, end = _parse(f"{field}[{index}]", text)
        out.append(f"{_fmt(start)}-{_fmt(end)}")
    return out


def allocate(ranges: list[str], used: set[str]) -> str:
    """The lowest address in the pool that ``used`` does not hold."""
    taken = {int(netaddr.EUI(mac)) for mac in used}
    for index, text in enumerate(ranges):
        start, end = _parse(f"mac_pool[{index}]", text)
        for value in range(start, end + 1):
            if value not in taken:
                return _fmt(value)
    raise InvalidSpec("mac_pool", f"every address in the cluster's MAC pool is in use ({len(taken)})")
