"""Statistics as users read them: a host's or VM's current figures (host_statistics,
vm_statistics: the last poll) and its history over a window (services.stats_history)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine_lib.model import HostStatistics, VmStatistics, utcnow
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import stats_history
from engine_lib.services.common import get_host, get_vm, iso_utc
from engine_lib.services.stats_window import window

__all__ = ["HOST_FIGURES", "KINDS", "VM_FIGURES", "StatsService", "current_by_id",
           "with_statistics"]

KINDS = ("host", "vm")
HOST_FIGURES = ("cpu_percent", "memory_used_mib", "memory_free_mib", "load_1m", "load_5m",
                "load_15m", "net_rx_bps", "net_tx_bps", "disk_read_bps", "disk_write_bps",
                "running_vms")
VM_FIGURES = ("cpu_percent", "memory_used_mib", "balloon_current_mib", "balloon_target_mib",
              "net_rx_bps", "net_tx_bps", "disk_read_bps", "disk_write_bps")
_TABLES = {"host": (HostStatistics, HostStatistics.host_id, HOST_FIGURES),
           "vm": (VmStatistics, VmStatistics.vm_id, VM_FIGURES)}


def _kind(kind) -> str:
    if kind not in KINDS:
        raise InvalidSpec("kind", f"must be host or vm (got {kind!r})")
    return kind


def current_by_id(session: Session, kind: str, ids: Iterable[str]) -> dict[str, dict]:
    """Object id -> its current figures, for those of ``ids`` that have any (one query)."""
    table, key, figures = _TABLES[kind]
    wanted = list(ids)
    if not wanted:
        return {}
    return {getattr(row, key.key): {"sampled_at": iso_utc(row.sampled_at),
                                    **{figure: getattr(row, figure) for figure in figures}}
            for row in session.scalars(select(table).where(key.in_(wanted)))}


def with_statistics(session: Session, kind: str, items: list[dict]) -> list[dict]:
    """host_info / vm_info: each item (a host_dict or vm_dict) gains "statistics", its
    current figures, or {} before the first poll (and for a VM that is not running)."""
    current = current_by_id(session, kind, [item["id"] for item in items])
    for item in items:
        item["statistics"] = current.get(item["id"], {})
    return items


class StatsService:
    def __init__(self, engine):
        self.engine = engine

    def _object_id(self, session: Session, kind: str, name: str) -> str:
        return (get_host if _kind(kind) == "host" else get_vm)(session, name).id

    def current(self, kind: str, name: str) -> dict:
        """The figures of the host's or VM's last poll; {} before any."""
        with self.engine.store.transaction(commit=False) as session:
            object_id = self._object_id(session, kind, name)
            return current_by_id(session, kind, [object_id]).get(object_id, {})

    def info(self, kind: str, name: str, since=None, until=None, period: str | None = None,
             resolution: str | None = None) -> dict:
        """Current figures and the history of a window (any two of since, until and
        period; by default the last 24h), oldest sample first."""
        _kind(kind)
        span = window(utcnow().replace(microsecond=0), period=period, since=since, until=until,
                      resolution=resolution)
        with self.engine.store.transaction(commit=False) as session:
            object_id = self._object_id(session, kind, name)
            current = current_by_id(session, kind, [object_id]).get(object_id, {})
            samples = stats_history.history(session, kind, object_id, span.since, span.until,
                                             span.resolution)
        return {"kind": kind, "name": name, "current": current,
                "since": iso_utc(span.since), "until": iso_utc(span.until),
                "resolution": span.resolution, "samples": samples}

    # The API's routes (GET /hosts/{name}/statistics, /vms/{name}/statistics) and what
    # modules call, locally or remotely.

    def host(self, name: str, period: str | None = None, since: str | None = None,
             until: str | None = None, resolution: str | None = None) -> dict:
        """A host's current figures and history."""
        return self.info("host", name, since=since, until=until, period=period,
                         resolution=resolution)

    def vm(self, name: str, period: str | None = None, since: str | None = None,
           until: str | None = None, resolution: str | None = None) -> dict:
        """A VM's current figures and history."""
        return self.info("vm", name, since=since, until=until, period=period,
                         resolution=resolution)
