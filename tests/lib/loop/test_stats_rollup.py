"""The loop's statistics upkeep rolls the engine's history up (at start, then hourly)."""

from datetime import timedelta

from sqlalchemy import select

from engine_lib.loop.stats_rollup import StatsRollup
from engine_lib.model import StatsSample, utcnow
from engine_lib.services import stats_history


def test_a_cycle_rolls_up_complete_hours_and_reruns_as_a_no_op(engine):
    hour = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    with engine.store.transaction() as session:
        for minute in range(3):
            stats_history.record_minute(session, "host", [
                {"object_id": "h1", "cpu_percent": 10.0 * minute}],
                hour + timedelta(minutes=minute))
    rollup = StatsRollup(engine)
    # (Its day is complete too when the test runs just after midnight.)
    assert rollup.cycle()["hour"] == 1
    assert rollup.cycle() == {"hour": 0, "day": 0, "purged": 0}
    with engine.store.transaction(commit=False) as session:
        row = session.scalars(select(StatsSample).where(StatsSample.resolution == "hour")).one()
        assert (row.object_id, row.samples, row.cpu_percent, row.cpu_percent_max) == (
            "h1", 3, 10.0, 20.0)
