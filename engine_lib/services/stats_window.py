"""The stretch of history a caller asks for: ``period``, ``since``, ``until`` and
``resolution``, checked, as one window of UTC times and the resolution to read it at."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import NamedTuple

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.common import as_utc

__all__ = ["DEFAULT_PERIOD", "RESOLUTIONS", "Window", "parse_period", "window"]

RESOLUTIONS = ("raw", "hour", "day")
DEFAULT_PERIOD = "24h"
# Daily history is kept for 365 days (services.stats_history): older is never there.
LONGEST = timedelta(days=365)
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1),
          "w": timedelta(weeks=1), "y": timedelta(days=365)}
_PERIOD = re.compile(r"([0-9]{1,6})([mhdwy])")


class Window(NamedTuple):
    since: datetime
    until: datetime
    resolution: str


def parse_period(value) -> timedelta:
    """"30m", "24h", "7d", "2w", "1y" as a duration from a minute to a year."""
    match = _PERIOD.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidSpec("period", f"must be a number and a unit (m, h, d, w or y), such as "
                                    f"1h, 24h, 7d, 30d or 1y; got {value!r}")
    length = int(match[1]) * _UNITS[match[2]]
    if not length:
        raise InvalidSpec("period", f"must be longer than nothing, got {value!r}")
    if length > LONGEST:
        raise InvalidSpec("period", f"must be at most 1y (history is kept for 365 days), "
                                    f"got {value!r}")
    return length


def _moment(field: str, value) -> datetime:
    if isinstance(value, datetime):
        return as_utc(value)
    try:
        return as_utc(datetime.fromisoformat(value))
    except (TypeError, ValueError):
        raise InvalidSpec(field, f"must be an ISO 8601 date and time such as "
                                 f"2026-12-06T18:00:00+00:00, got {value!r}") from None


def _auto_resolution(span: timedelta) -> str:
    # What stats_history keeps: minutes for a day, hours for 30 days, days for a year.
    if span <= timedelta(days=1):
        return "raw"
    return "hour" if span <= timedelta(days=30) else "day"


def window(now: datetime, *, period=None, since=None, until=None, resolution=None) -> Window:
    """Any two of ``since``, ``until`` and ``period`` (``until`` defaults to now, the
    period to 24h); ``resolution`` raw, hour or day, else the finest that history keeps
    for the window's length."""
    if period is not None and since is not None and until is not None:
        raise InvalidSpec("period", "give at most two of since, until and period")
    length = parse_period(period) if period is not None else None
    start = _moment("since", since) if since is not None else None
    end = _moment("until", until) if until is not None else None
    if start is not None and start > now:
        raise InvalidSpec("since", f"is in the future ({start.isoformat()}): no figures yet")
    if end is None:
        end = start + length if start is not None and length is not None else now
    if start is None:
        start = end - (length or parse_period(DEFAULT_PERIOD))
    if start >= end:
        raise InvalidSpec("since", f"must be before until ({start.isoformat()} is not "
                                   f"before {end.isoformat()})")
    if end - start > LONGEST:
        raise InvalidSpec("since", "the window from since to until must be at most a year "
                                   "(history is kept for 365 days)")
    if resolution is None:
        return Window(start, end, _auto_resolution(end - start))
    if resolution not in RESOLUTIONS:
        raise InvalidSpec("resolution", f"must be one of {', '.join(RESOLUTIONS)} "
                                        f"(got {resolution!r})")
    return Window(start, end, resolution)
