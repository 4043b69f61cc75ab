"""What a timed piece of engine work cost: this process's CPU, wall time, rows written,
and the PostgreSQL server's CPU (its processes' utime + stime from /proc)."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import event

_TICK = os.sysconf("SC_CLK_TCK")
_WRITE = re.compile(r"^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(\w+)", re.I)


class RowCounter:
    """Rows each INSERT, UPDATE and DELETE reports, per table (the driver's rowcount;
    an INSERT ... RETURNING reports none before its rows are read: counted elsewhere)."""

    def __init__(self, sql_engine):
        self.by_table: Counter[str] = Counter()
        event.listen(sql_engine, "after_cursor_execute", self._count)

    def _count(self, _conn, cursor, statement, _params, _context, _executemany) -> None:
        match = _WRITE.match(statement)
        if match and " RETURNING " not in statement and cursor.rowcount > 0:
            self.by_table[match.group(2)] += cursor.rowcount

    def total(self) -> int:
        return sum(self.by_table.values())


def pg_server_pids(db_url: str) -> list[int]:
    """The postmaster of a tests/support/postgres.py server (its socket dir's sibling
    data dir) and its children: the backends, the WAL writer, autovacuum."""
    sockets = re.search(r"host=([^&]+)", db_url)
    if not db_url.startswith("postgresql") or sockets is None:
        return []
    pid_file = Path(sockets.group(1)).parent / "data" / "postmaster.pid"
    master = int(pid_file.read_text().split()[0])
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a backend that ended: its CPU is lost to the figure (rare)
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


@dataclass
class Cost:
    cpu_s: float = 0.0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    record_s: float = 0.0  # the part inside statistics.record (cycles only)
    history_s: float = 0.0  # the part inside stats_history.record_minute
    rows: Counter[str] = field(default_factory=Counter)

    @property
    def rows_written(self) -> int:
        return sum(self.rows.values())


@contextmanager
def measured(counter: RowCounter, db_url: str):
    """Yield a Cost filled in when the block ends."""
    cost, pids = Cost(), pg_server_pids(db_url)
    before_rows = Counter(counter.by_table)
    server, cpu, wall = _cpu_s(pids), time.process_time(), time.perf_counter()
    yield cost
    cost.wall_s = time.perf_counter() - wall
    cost.cpu_s = time.process_time() - cpu
    cost.server_cpu_s = _cpu_s(pids) - server
    cost.rows = counter.by_table - before_rows
