"""History rollups (stats_history.rollup) on raw samples inserted in bulk.

1. The hourly run as it happens every hour: the last complete hour of raw samples of
   every host and VM becomes one hour row each, and raw samples past their 24 h
   retention go (a quarter of an hour of them: the delete's cost, at a quarter the seeding).
2. A month of samples at once: ``objects`` hosts' or VMs' raw samples of every minute of
   30 days (an engine whose rollup never ran), rolled up to hours and days, then cut to
   what retention keeps: that is the worst case the table's size is bounded by.
The rows are valid rows of stats_samples, written straight to the table (COPY on
PostgreSQL) because record_minute one minute at a time would take the bench's budget.
"""

from __future__ import annotations

import gc
import random
from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from bench.stats.meters import Cost, RowCounter, measured
from engine_lib.model import StatsSample
from engine_lib.services import stats_history

_COLUMNS = ("kind", "object_id", "resolution", "at", "samples", "cpu_percent",
            "cpu_percent_max", "memory_used_mib", "memory_free_mib", "load_1m", "net_rx_bps",
            "net_tx_bps", "disk_read_bps", "disk_write_bps")
_BATCH = 50_000


def _rows(objects: list[tuple[str, str]], start: datetime, minutes: int, rng: random.Random):
    for kind, object_id in objects:
        cpu = rng.uniform(5, 80)
        for minute in range(minutes):
            cpu = min(100.0, max(0.0, cpu + rng.gauss(0, 3)))
            yield (kind, object_id, "raw", start + timedelta(minutes=minute), 1, cpu, cpu,
                   rng.uniform(1000, 8000), rng.uniform(0, 4000),
                   cpu / 10 if kind == "host" else None, rng.uniform(0, 1e6),
                   rng.uniform(0, 1e6), rng.uniform(0, 1e6), rng.uniform(0, 1e6))


def insert_raw(store, objects, start: datetime, minutes: int, seed: int = 5) -> int:
    """Raw samples of ``objects`` for ``minutes`` minutes from ``start``; rows inserted."""
    rows = _rows(objects, start, minutes, random.Random(seed))
    count = 0
    if store.engine.dialect.name == "postgresql":
        raw = store.engine.raw_connection()
        try:
            with raw.cursor() as cursor, cursor.copy(
                    f"COPY stats_samples ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
            raw.commit()
        finally:
            raw.close()
        return count
    # SQLite: the driver's executemany with `at` as SQLAlchemy stores it (text, UTC).
    raw = store.engine.raw_connection()
    try:
        cursor, batch = raw.cursor(), []
        cursor.execute("BEGIN IMMEDIATE")  # the store's connections run in autocommit
        sql = (f"INSERT INTO stats_samples ({', '.join(_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_COLUMNS))})")
        for row in rows:
            batch.append((*row[:3], row[3].strftime("%Y-%m-%d %H:%M:%S.%f"), *row[4:]))
            if len(batch) == _BATCH:
                cursor.executemany(sql, batch)
                count, batch = count + len(batch), []
        cursor.executemany(sql, batch)
        raw.commit()
    finally:
        raw.close()
    return count + len(batch)


def clear(store) -> None:
    with store.transaction() as session:
        session.execute(delete(StatsSample))
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE stats_samples")


def counts(store) -> dict[str, int]:
    with store.transaction(commit=False) as session:
        return dict(session.execute(select(StatsSample.resolution, func.count())
                                    .group_by(StatsSample.resolution)).all())


def run(store, counter: RowCounter, db_url: str, now: datetime) -> tuple[Cost, dict]:
    """One rollup at ``now``: its cost and what it reported."""
    gc.collect()
    with measured(counter, db_url) as cost, store.transaction() as session:
        report = stats_history.rollup(session, now)
    # Its INSERT ... RETURNING has no rowcount: the rows are what it reports.
    cost.rows = Counter({"hour rows": report["hour"], "day rows": report["day"],
                         "purged": report["purged"]})
    return cost, report


def hourly(store, counter: RowCounter, db_url: str, objects, hour: datetime) -> dict:
    """The run at ``hour`` + 5 min over the hour before it, and day-old samples to drop."""
    clear(store)
    seeded = insert_raw(store, objects, hour - timedelta(hours=1), 60)
    seeded += insert_raw(store, objects, hour - timedelta(hours=25), 15, seed=6)
    if store.engine.dialect.name == "postgresql":
        _analyze(store)
    cost, _ = run(store, counter, db_url, hour + timedelta(minutes=5))
    return {"objects": len(objects), "raw_rows": seeded, "cost": cost, "after": counts(store)}


def month(store, counter: RowCounter, db_url: str, objects, end: datetime) -> dict:
    """30 days of minutes for ``objects``, rolled up at ``end`` + 5 min."""
    clear(store)
    seeded = insert_raw(store, objects, end - timedelta(days=30), 30 * 1440)
    if store.engine.dialect.name == "postgresql":
        _analyze(store)
    cost, _ = run(store, counter, db_url, end + timedelta(minutes=5))
    return {"objects": len(objects), "raw_rows": seeded, "cost": cost, "after": counts(store)}


def _analyze(store) -> None:
    # What autovacuum does after a bulk load; without it the planner guesses an empty table.
    with store.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "ANALYZE stats_samples")
