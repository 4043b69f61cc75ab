"""Statistics history (stand-in: only the balancer's query, until stats-history lands)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib.model import StatsSample


def cpu_minutes(session: Session, host_ids: list[str], minutes: int,
                now: datetime) -> dict[str, list[float]]:
    """Each host's raw cpu_percent of the last ``minutes`` minutes (this one included),
    oldest first."""
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    rows = session.execute(
        select(StatsSample.object_id, StatsSample.cpu_percent)
        .where(StatsSample.kind == "host", StatsSample.resolution == "raw",
               StatsSample.object_id.in_(host_ids), StatsSample.at >= since,
               StatsSample.cpu_percent.is_not(None))
        .order_by(StatsSample.object_id, StatsSample.at))
    found: dict[str, list[float]] = {h: [] for h in host_ids}
    for host_id, cpu in rows:
        found[host_id].append(float(cpu))
    return found
