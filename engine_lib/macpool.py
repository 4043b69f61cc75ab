"""MAC address pools: ranges per cluster, lowest free address first.

A MAC is allocated once, stored with its NIC and never regenerated; a
re-run of the same playbook must not change a guest's MAC. MACs are unique
across the engine (the database holds a unique index on them): every
cluster starts with the same default range, as every oVirt cluster starts on
the one Default pool, and a MAC given to VMs of two clusters would clash on
any network they share.

Ranges can hold up to 2**48 addresses, so nothing here enumerates a range:
sizes are arithmetic and allocation walks only the addresses in use.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import netaddr

from engine_lib.protocol.errors import InvalidSpec

# Locally administered, unicast (oVirt uses 56:6f:...; we keep a range of our own).
DEFAULT_RANGES = ("56:6f:4b:00:00:00-56:6f:4b:ff:ff:ff",)
# The I/G bit: set in the first octet of multicast (and the broadcast) addresses.
_GROUP_BIT = 1 << 40
_BROADCAST = (1 << 48) - 1


def _parse(field: str, text: str) -> tuple[int, int]:
    first, sep, last = str(text).partition("-")
    try:
        start, end = int(netaddr.EUI(first.strip())), int(netaddr.EUI(last.strip()))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidSpec(field, f"'{text}' is not a range 'first-last' of MAC addresses") from None
    if not sep or start > end:
        raise InvalidSpec(field, f"'{text}' is not a range 'first-last' with first <= last")
    if start == 0:
        raise InvalidSpec(field, f"'{text}' holds the all-zero address, which no NIC may use")
    if end == _BROADCAST:
        raise InvalidSpec(field, f"'{text}' holds the broadcast address ff:ff:ff:ff:ff:ff")
    # Only the first octet's low bit decides: a range stays unicast only while that
    # octet is one even value from its first address to its last.
    if start & _GROUP_BIT or start >> 40 != end >> 40:
        raise InvalidSpec(field, f"'{text}' holds multicast addresses (an odd first octet); "
                                 "a pool must keep the first octet even throughout")
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


def size(ranges: list[str]) -> int:
    """How many addresses the pool holds (ranges that overlap count once)."""
    total, reached = 0, -1
    for start, end in sorted(_parse(f"mac_pool[{i}]", t) for i, t in enumerate(ranges)):
        start = max(start, reached + 1)
        if start <= end:
            total += end - start + 1
            reached = end
    return total


def allocate(ranges: list[str], used: set[str]) -> str:
    """The lowest address in the pool that ``used`` does not hold."""
    taken = sorted({int(netaddr.EUI(mac)) for mac in used})
    for index, text in enumerate(ranges):
        start, end = _parse(f"mac_pool[{index}]", text)
        candidate = start
        # Walk the used addresses from the range's start: each one equal to the
        # candidate pushes it on, the first gap is free.
        for value in taken[bisect.bisect_left(taken, start):]:
            if value != candidate or candidate > end:
                break
            candidate += 1
        if candidate <= end:
            return _fmt(candidate)
    raise InvalidSpec("mac_pool", f"every address in the cluster's MAC pool is in use "
                                  f"({size(ranges)} addresses)")
