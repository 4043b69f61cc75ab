"""The window of history a caller asks for: defaults, combinations, and nonsense refused
naming the option."""

from datetime import UTC, datetime, timedelta

import pytest

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.stats_window import parse_period, window

NOW = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)


def test_periods():
    assert [parse_period(p) for p in ("30m", "1h", "24h", "7d", "2w", "1y")] == [
        timedelta(minutes=30), timedelta(hours=1), timedelta(days=1), timedelta(days=7),
        timedelta(days=14), timedelta(days=365)]


def test_defaults_and_combinations():
    assert window(NOW) == (NOW - timedelta(hours=24), NOW, "raw")
    assert window(NOW, period="7d")[1:] == (NOW, "hour")
    assert window(NOW, period="90d").resolution == "day"
    assert window(NOW, period="30m", resolution="day").resolution == "day"
    since = datetime(2026, 12, 1, 6, tzinfo=UTC)
    assert window(NOW, since="2026-12-01T06:00:00+00:00", period="2h")[:2] == (
        since, since + timedelta(hours=2))
    # A time without a zone is UTC, as every time the engine stores.
    assert window(NOW, until="2026-12-01T06:00:00", period="1h")[:2] == (
        since - timedelta(hours=1), since)
    assert window(NOW, since="2026-12-01T06:00:00Z").until == NOW


@pytest.mark.parametrize("options, field, reason", [
    ({"period": "yesterday"}, "period", "must be a number and a unit"),
    ({"period": 24}, "period", "must be a number and a unit"),
    ({"period": "-1h"}, "period", "must be a number and a unit"),
    ({"period": "0d"}, "period", "longer than nothing"),
    ({"period": "2y"}, "period", "at most 1y"),
    ({"since": "last tuesday"}, "since", "ISO 8601"),
    ({"until": "soon"}, "until", "ISO 8601"),
    ({"since": "2999-01-01T00:00:00+00:00"}, "since", "in the future"),
    ({"since": "2026-12-06T10:00:00+00:00", "until": "2026-12-06T09:00:00+00:00"}, "since",
     "before until"),
    ({"since": "2020-01-01T00:00:00+00:00", "until": "2026-01-01T00:00:00+00:00"}, "since",
     "at most a year"),
    ({"since": "2026-12-06T10:00:00+00:00", "until": "2026-12-06T11:00:00+00:00",
      "period": "1h"}, "period", "at most two"),
    ({"resolution": "minute"}, "resolution", "one of raw, hour, day"),
])
def test_nonsense_is_refused_naming_the_option(options, field, reason):
    with pytest.raises(InvalidSpec, match=reason) as refused:
        window(NOW, **options)
    assert refused.value.field == field
