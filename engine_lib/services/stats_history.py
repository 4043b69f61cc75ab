"""The history of hosts' and VMs' figures: a row a minute, rolled up into hours and days.

Each statistics poll writes at most one "raw" row per object and minute
(``record_minute``). ``rollup`` (the loop runs it hourly) averages the raw rows
of every complete hour into an "hour" row, the hour rows of every complete day
into a "day" row, and then drops what is past its retention: raw rows after a
day, hour rows after 30 days, day rows after a year.

So the history stays bounded whatever the uptime. Worst case per host or VM,
just before a rollup (which runs hourly): 1,500 raw rows (24 h + the hour since
the last purge), 745 hour rows (30 days + that hour + one being rolled) and 366
day rows: about 2,600 rows, some 0.5 MB with indexes per object, so 10,000 VMs
keep at most some 26 million rows.

Aggregation happens in SQL (GROUP BY object and hour/day bucket); only the bucket
expression differs between SQLite and PostgreSQL. Every write is INSERT ... ON
CONFLICT DO NOTHING on the (kind, object_id, resolution, at) key: a second
sample in the same minute, or a rerun of a rollup, changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import case, delete, func, literal, literal_column, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from engine_lib.model import StatsSample
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.common import iso_utc

FIGURES = ("cpu_percent", "memory_used_mib", "memory_free_mib", "load_1m", "net_rx_bps",
           "net_tx_bps", "disk_read_bps", "disk_write_bps")
KINDS = ("host", "vm")
RESOLUTIONS = ("raw", "hour", "day")
# How long each resolution is kept.
RETENTION = {"raw": timedelta(hours=24), "hour": timedelta(days=30), "day": timedelta(days=365)}
# history() without a resolution: the finest one whose retention covers the span.
_SPAN = (("raw", timedelta(days=1)), ("hour", timedelta(days=30)))
_KEY = ("kind", "object_id", "resolution", "at")
_TABLE = StatsSample.__table__


def record_minute(session: Session, kind: str, rows: list[dict], now: datetime) -> int:
    """Write one raw row per object for the minute of ``now`` (a second call within the
    minute leaves that object's row as it is); return how many rows were written.

    ``rows``: ``{"object_id": ..., <FIGURES>}`` each; a missing figure is None."""
    _check_kind(kind)
    if not rows:
        return 0
    minute = _truncate(now, "raw")
    values = [{"kind": kind, "object_id": row["object_id"], "resolution": "raw", "at": minute,
               "samples": 1, "cpu_percent_max": row.get("cpu_percent"),
               **{figure: row.get(figure) for figure in FIGURES}} for row in rows]
    # RETURNING counts only the rows inserted (a duplicate returns nothing), on both
    # databases and in batches (rowcount of an executemany is not reliable).
    statement = _insert(session).on_conflict_do_nothing(index_elements=_KEY)
    return len(session.execute(statement.returning(_TABLE.c.id), values).all())


def rollup(session: Session, now: datetime) -> dict:
    """Raw rows of complete hours into hour rows, hour rows of complete days into day
    rows, then the retention purge. Idempotent. Returns the counts of rows written and
    deleted: {"hour", "day", "purged"}."""
    now = _utc(now)
    done = {"hour": _roll(session, "raw", "hour", _truncate(now, "hour")),
            "day": _roll(session, "hour", "day", _truncate(now, "day"))}
    done["purged"] = sum(session.execute(delete(StatsSample).where(
        StatsSample.resolution == resolution, StatsSample.at < now - keep)).rowcount
        for resolution, keep in RETENTION.items())
    return done


def history(session: Session, kind: str, object_id: str, since: datetime, until: datetime,
            resolution: str | None = None) -> list[dict]:
    """The object's rows from the bucket holding ``since`` up to ``until``, oldest first.
    Without a resolution: raw for a span up to a day, hourly up to 30 days, else daily."""
    _check_kind(kind)
    since, until = _utc(since), _utc(until)
    if until < since:
        raise InvalidSpec("until", f"{until.isoformat()} is before since ({since.isoformat()})")
    if resolution is None:
        resolution = next((name for name, span in _SPAN if until - since <= span), "day")
    elif resolution not in RESOLUTIONS:
        raise InvalidSpec("resolution", f"{resolution!r} is not one of {', '.join(RESOLUTIONS)}")
    s = StatsSample
    columns = [s.at, s.samples, *(getattr(s, figure) for figure in FIGURES), s.cpu_percent_max]
    found = session.execute(select(*columns).where(
        s.kind == kind, s.object_id == object_id, s.resolution == resolution,
        s.at >= _truncate(since, resolution), s.at <= until).order_by(s.at))
    return [{"at": iso_utc(row.at), "samples": row.samples,
             **{figure: getattr(row, figure) for figure in FIGURES},
             "cpu_percent_max": row.cpu_percent_max} for row in found]


def cpu_minutes(session: Session, host_ids: list[str], minutes: int,
                now: datetime) -> dict[str, list[float]]:
    """Each host's raw CPU percent of the last ``minutes`` minutes (the minute of ``now``
    included), oldest first; minutes without a figure are left out."""
    found: dict[str, list[float]] = {host_id: [] for host_id in host_ids}
    if not host_ids or minutes <= 0:
        return found
    now = _utc(now)
    s = StatsSample
    rows = session.execute(select(s.object_id, s.cpu_percent).where(
        s.kind == "host", s.resolution == "raw", s.object_id.in_(host_ids),
        s.at >= _truncate(now, "raw") - timedelta(minutes=minutes - 1), s.at <= now,
        s.cpu_percent.is_not(None)).order_by(s.at))
    for host_id, percent in rows:
        found[host_id].append(percent)
    return found


def _roll(session: Session, source: str, target: str, until: datetime) -> int:
    """Aggregate ``source`` rows before ``until`` into ``target`` rows, one per object
    and bucket; return how many were written.

    Figures are averaged weighted by each row's samples (so a day is the mean of its
    minutes, not of its hours), ignoring missing figures; the CPU maximum is the
    highest seen. Only buckets from the latest ``target`` row on are read, so an
    hourly run reads about an hour of raw rows, not a day's; that latest bucket is
    read again (for an object whose rows came late), its existing rows kept."""
    s = StatsSample
    bucket = _bucket(session, target, s.at).label("bucket")
    where = [s.resolution == source, s.at < until]
    latest = session.scalar(select(func.max(s.at)).where(s.resolution == target))
    if latest is not None:
        where.append(s.at >= latest)

    def mean(figure: str):
        column = getattr(s, figure)
        weight = func.sum(case((column.is_not(None), s.samples)))
        return func.sum(column * s.samples) / func.nullif(weight, 0)

    rolled = select(s.kind, s.object_id, literal(target), bucket, func.sum(s.samples),
                    *(mean(figure) for figure in FIGURES), func.max(s.cpu_percent_max)
                    ).where(*where).group_by(s.kind, s.object_id, bucket)
    names = [*_KEY, "samples", *FIGURES, "cpu_percent_max"]
    statement = _insert(session).from_select(names, rolled).on_conflict_do_nothing(
        index_elements=_KEY).returning(_TABLE.c.id)
    return len(session.execute(statement).all())


def _bucket(session: Session, unit: str, column):
    """The start of the UTC hour or day holding ``column``, in the column's own form."""
    if session.get_bind().dialect.name == "postgresql":
        # date_trunc on a timestamptz truncates in the session's time zone: do it in UTC.
        # The unit is a literal so that the select list and GROUP BY are one expression.
        utc = literal_column("'UTC'")
        return func.timezone(utc, func.date_trunc(literal_column(f"'{unit}'"),
                                                  func.timezone(utc, column)))
    # SQLite keeps these columns as 'YYYY-MM-DD HH:MM:SS.ffffff' text in UTC.
    pattern = {"hour": "%Y-%m-%d %H:00:00.000000", "day": "%Y-%m-%d 00:00:00.000000"}[unit]
    return func.strftime(literal_column(f"'{pattern}'"), column)


def _insert(session: Session):
    dialect = session.get_bind().dialect.name
    return (postgresql_insert if dialect == "postgresql" else sqlite_insert)(_TABLE)


def _truncate(moment: datetime, resolution: str) -> datetime:
    moment = _utc(moment)
    if resolution == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if resolution == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(second=0, microsecond=0)


def _utc(moment: datetime) -> datetime:
    # Naive datetimes are UTC (as SQLite hands them back).
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InvalidSpec("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
