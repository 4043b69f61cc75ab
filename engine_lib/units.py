"""Sizes as users write them ("512MiB", "4GiB", 256) turned into whole MiB."""

from __future__ import annotations

import re

from engine_lib.protocol.errors import InvalidSpec

_FACTORS_KIB = {
    "k": 1, "kib": 1, "m": 1024, "mib": 1024, "g": 1024**2, "gib": 1024**2,
    "t": 1024**3, "tib": 1024**3,
    # Decimal units are accepted because people write them; they must still
    # come out as a whole number of MiB.
    "kb": 1000 / 1024, "mb": 1000**2 / 1024, "gb": 1000**3 / 1024, "tb": 1000**4 / 1024,
}
# At most 15 significant digits: a float holds them exactly, and no size needs more.
_SIZE = re.compile(r"^\s*([-+]?\d{1,15}(?:\.\d{1,15})?)\s*([A-Za-z]*)\s*$")
# 2 PiB: more than any host or volume, and still a 32-bit column in MiB.
MAX_MIB = 2**31 - 1


def size_mib(field: str, value: object) -> int:
    """Parse a positive size; a bare number means MiB."""
    if isinstance(value, bool):
        raise InvalidSpec(field, f"expected a size such as 512MiB or 4GiB, got {value!r}")
    if isinstance(value, int):
        # A huge int is compared, never printed: its repr() is itself an error.
        if value > MAX_MIB:
            raise InvalidSpec(field, f"is larger than {MAX_MIB} MiB (2 PiB)")
        if value <= 0:
            shown = repr(value) if value > -MAX_MIB else "a large negative number"
            raise InvalidSpec(field, f"must be greater than zero, got {shown}")
        return value
    if not isinstance(value, str):
        raise InvalidSpec(field, f"expected a size such as 512MiB or 4GiB, got "
                                 f"{type(value).__name__}")
    match = _SIZE.match(value) if len(value) <= 64 else None
    if not match:
        raise InvalidSpec(field, f"expected a size such as 512MiB or 4GiB (at most 15 "
                                 f"digits), got {value[:64]!r}")
    number, unit = match.groups()
    if unit.lower() not in _FACTORS_KIB and unit:
        raise InvalidSpec(field, f"unknown unit '{unit}' (use KiB, MiB, GiB or TiB)")
    kib = float(number) * _FACTORS_KIB[unit.lower() or "m"]
    if kib <= 0:
        raise InvalidSpec(field, f"must be greater than zero, got {value!r}")
    if kib / 1024 > MAX_MIB:
        raise InvalidSpec(field, f"is larger than {MAX_MIB} MiB (2 PiB), got {value!r}")
    if abs(kib / 1024 - round(kib / 1024)) > 1e-9:
        raise InvalidSpec(field, f"{value!r} is not a whole number of MiB")
    return round(kib / 1024)
