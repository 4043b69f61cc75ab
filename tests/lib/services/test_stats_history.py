"""The statistics history: a raw row a minute, hourly and daily rollups done in SQL,
retention, and the reads (by span, and the balancer's CPU minutes), on SQLite and
PostgreSQL."""

from datetime import UTC, datetime, timedelta

import postgres
import pytest
from sqlalchemy import delete, insert, select, text

from engine_lib.model import StatsSample
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import stats_history
from engine_lib.store import Store

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
BLANK = dict.fromkeys(stats_history.FIGURES)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def migrated(request, tmp_path_factory):
    """One migrated database per engine for the module (as db_url gives, but the
    migrations run once, not per test)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('history')}/engine.db"
    else:
        url = postgres.create_database(request.getfixturevalue("postgres_server"),
                                       "test_stats_history")
    store = Store(url)
    store.upgrade()
    yield store
    store.close()


@pytest.fixture
def store(migrated):
    yield migrated
    with migrated.transaction() as session:
        session.execute(delete(StatsSample))


def _bulk(store, kind, object_id, resolution, start, step, figures):
    """Rows ``start + i*step`` with ``figures[i]`` (a dict of figures and samples)."""
    with store.transaction() as session:
        session.execute(insert(StatsSample), [
            {**BLANK, "samples": 1, "cpu_percent_max": values.get("cpu_percent"),
             **values, "kind": kind, "object_id": object_id, "resolution": resolution,
             "at": start + i * step} for i, values in enumerate(figures)])


def _rows(store, resolution, kind="host"):
    with store.transaction(commit=False) as session:
        return [(r.object_id, r.at.replace(tzinfo=UTC), r.samples, r.cpu_percent,
                 r.cpu_percent_max, r.memory_used_mib, r.net_rx_bps)
                for r in session.scalars(select(StatsSample).where(
                    StatsSample.resolution == resolution, StatsSample.kind == kind)
                    .order_by(StatsSample.object_id, StatsSample.at))]


def test_one_raw_row_per_object_per_minute(store):
    with store.transaction() as session:
        assert stats_history.record_minute(session, "host", [
            {"object_id": "h1", "cpu_percent": 10.0, "memory_used_mib": 100, "extra": 1},
            {"object_id": "h2", "cpu_percent": None}], T0 + timedelta(seconds=5)) == 2
    with store.transaction() as session:
        # Later in the same minute: h1 keeps its first figures; h3 is new.
        assert stats_history.record_minute(session, "host", [
            {"object_id": "h1", "cpu_percent": 90.0},
            {"object_id": "h3", "cpu_percent": 5.0}], T0 + timedelta(seconds=50)) == 1
    with store.transaction() as session:
        assert stats_history.record_minute(session, "host", [
            {"object_id": "h1", "cpu_percent": 20.0}], T0 + timedelta(minutes=1)) == 1
        assert stats_history.record_minute(session, "vm", [], T0) == 0
    assert _rows(store, "raw") == [("h1", T0, 1, 10.0, 10.0, 100.0, None),
                                   ("h1", T0 + timedelta(minutes=1), 1, 20.0, 20.0, None, None),
                                   ("h2", T0, 1, None, None, None, None),
                                   ("h3", T0, 1, 5.0, 5.0, None, None)]


def test_complete_hours_roll_up_into_averages_once(store):
    # Three hours of minutes (10:00 to 12:59) for a host and a VM; the rollup runs at 12:30.
    minutes = [{"cpu_percent": float(i % 60), "memory_used_mib": 1000 + (i // 60) * 100}
               for i in range(180)]
    minutes[5]["cpu_percent"] = None  # a minute without CPU: left out of the average
    _bulk(store, "host", "h1", "raw", T0, timedelta(minutes=1), minutes)
    _bulk(store, "vm", "vm1", "raw", T0, timedelta(minutes=1),
          [{"cpu_percent": 50.0, "net_rx_bps": 8.0}] * 180)
    now = T0 + timedelta(hours=2, minutes=30)
    with store.transaction() as session:
        assert stats_history.rollup(session, now) == {"hour": 4, "day": 0, "purged": 0}
    first_hour = (sum(range(60)) - 5) / 59
    assert _rows(store, "hour") == [
        ("h1", T0, 60, pytest.approx(first_hour), 59.0, 1000.0, None),
        ("h1", T0 + timedelta(hours=1), 60, 29.5, 59.0, 1100.0, None)]
    assert _rows(store, "hour", "vm") == [("vm1", T0, 60, 50.0, 50.0, None, 8.0),
                                          ("vm1", T0 + timedelta(hours=1), 60, 50.0, 50.0,
                                           None, 8.0)]
    before = _rows(store, "hour")
    with store.transaction() as session:
        assert stats_history.rollup(session, now) == {"hour": 0, "day": 0, "purged": 0}
        # Once 12:00 is complete, only that hour is added.
        assert stats_history.rollup(session, T0 + timedelta(hours=3)) == {
            "hour": 2, "day": 0, "purged": 0}
    assert _rows(store, "hour")[:2] == before
    assert len(_rows(store, "hour")) == 3


def test_a_day_averages_its_minutes_in_utc(store):
    """Day rows weigh each hour by its samples, and days are UTC days whatever the
    database session's time zone."""
    day = datetime(2026, 12, 1, tzinfo=UTC)
    hours = [{"cpu_percent": 10.0, "cpu_percent_max": 20.0, "samples": 60,
              "memory_used_mib": 500.0}] * 23 + [
        {"cpu_percent": 70.0, "cpu_percent_max": 95.0, "samples": 30, "memory_used_mib": None}]
    _bulk(store, "host", "h1", "hour", day, timedelta(hours=1), hours)
    _bulk(store, "host", "h1", "hour", day + timedelta(days=1), timedelta(hours=1),
          hours[:2])  # the next day, not complete yet
    with store.transaction() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET LOCAL TIME ZONE 'America/New_York'"))
        assert stats_history.rollup(session, day + timedelta(days=1, hours=3)) == {
            "hour": 0, "day": 1, "purged": 0}
    samples = 23 * 60 + 30
    assert _rows(store, "day") == [("h1", day, samples,
                                    pytest.approx((23 * 60 * 10 + 30 * 70) / samples), 95.0,
                                    500.0, None)]
    with store.transaction() as session:
        assert stats_history.rollup(session, day + timedelta(days=1, hours=3))["day"] == 0


def test_retention_keeps_a_day_of_minutes_a_month_of_hours_a_year_of_days(store):
    now = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
    _bulk(store, "vm", "vm1", "raw", now - timedelta(hours=24, minutes=2), timedelta(minutes=1),
          [{"cpu_percent": 1.0}] * 4)  # 24:02 and 24:01 ago go; 24:00 and 23:59 ago stay
    _bulk(store, "vm", "vm1", "hour", now - timedelta(days=30, hours=1), timedelta(hours=1),
          [{"cpu_percent": 1.0, "samples": 60}] * 2)
    _bulk(store, "vm", "vm1", "day", now - timedelta(days=366), timedelta(days=1),
          [{"cpu_percent": 1.0, "samples": 1440}] * 2)
    with store.transaction() as session:
        done = stats_history.rollup(session, now)
    assert done["purged"] == 2 + 1 + 1
    assert [r[1] for r in _rows(store, "raw", "vm")] == [now - timedelta(hours=24),
                                                         now - timedelta(hours=23, minutes=59)]
    assert done["hour"] == 1  # the complete hour of the raw rows kept
    assert [r[1] for r in _rows(store, "hour", "vm")] == [now - timedelta(days=30),
                                                          datetime(2026, 11, 30, 12, tzinfo=UTC)]
    # The days of those hours were rolled up before the purge and stay a year.
    assert [r[1] for r in _rows(store, "day", "vm")] == [
        now - timedelta(days=365), datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 11, 30, tzinfo=UTC)]


def test_history_picks_its_resolution_by_span(store):
    now = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
    for resolution, at in (("raw", now - timedelta(minutes=30)),
                           ("hour", now - timedelta(hours=2)),
                           ("day", now - timedelta(days=3))):
        _bulk(store, "host", "h1", resolution, at, timedelta(0), [{"cpu_percent": 5.0}])
    with store.transaction(commit=False) as session:
        def picked(since, resolution=None):
            found = stats_history.history(session, "host", "h1", now - since, now, resolution)
            return [(row["at"], row["samples"], row["cpu_percent_max"]) for row in found]

        assert picked(timedelta(hours=1)) == [("2026-12-01T12:00:00+00:00", 1, 5.0)]
        assert picked(timedelta(days=1)) == picked(timedelta(hours=1))
        assert picked(timedelta(days=2)) == [("2026-12-01T10:30:00+00:00", 1, 5.0)]
        assert picked(timedelta(days=30)) == picked(timedelta(days=2))
        assert picked(timedelta(days=31)) == [("2026-11-28T12:30:00+00:00", 1, 5.0)]
        assert picked(timedelta(days=365), "hour") == picked(timedelta(days=2))
        # The bucket holding `since` is included: the hour row of 10:30 from 10:45 on.
        assert picked(timedelta(hours=1, minutes=45), "hour") == picked(timedelta(days=2))
        row = stats_history.history(session, "host", "h1", now - timedelta(hours=1), now)[0]
        assert set(row) == {"at", "samples", "cpu_percent_max", *stats_history.FIGURES}
        assert stats_history.history(session, "vm", "h1", now - timedelta(hours=1), now) == []
        for call, field in (((now, now, "minute"), "resolution"),
                            ((now, now - timedelta(hours=1)), "until")):
            with pytest.raises(InvalidSpec) as raised:
                stats_history.history(session, "host", "h1", *call)
            assert raised.value.field == field
        with pytest.raises(InvalidSpec) as raised:
            stats_history.record_minute(session, "disk", [{"object_id": "x"}], now)
        assert raised.value.field == "kind"


def test_cpu_minutes_are_each_hosts_last_minutes_oldest_first(store):
    now = T0 + timedelta(minutes=9, seconds=30)
    _bulk(store, "host", "h1", "raw", T0, timedelta(minutes=1),
          [{"cpu_percent": float(i)} for i in range(10)])
    _bulk(store, "host", "h2", "raw", T0 + timedelta(minutes=7), timedelta(minutes=1),
          [{"cpu_percent": 70.0}, {"cpu_percent": None}, {"cpu_percent": 90.0}])
    _bulk(store, "vm", "h3", "raw", T0, timedelta(minutes=1), [{"cpu_percent": 1.0}] * 10)
    with store.transaction(commit=False) as session:
        assert stats_history.cpu_minutes(session, ["h1", "h2", "h3"], 4, now) == {
            "h1": [6.0, 7.0, 8.0, 9.0], "h2": [70.0, 90.0], "h3": []}
        assert stats_history.cpu_minutes(session, [], 4, now) == {}
