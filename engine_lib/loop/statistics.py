"""The VM poll's figures applied: a host's and its VMs' current statistics, and their history.

The agent's ``GET /stats`` answer (engine_lib.agent.vms.Hypervisor.stats) carries
the host's figures and each running VM's counters and rates. They go to
host_statistics and vm_statistics, never to the versioned hosts and vms rows
(a write every poll would make every module editing a VM or host lose its row
version). The two figures the scheduler reads from the host's row
(used_cpu_percent, used_memory_mib) are written by a plain UPDATE that leaves
its version alone, for the same reason.

Bulk statements only: one upsert per table and one delete, whatever the number
of VMs (the engine applies 10,000 VMs' figures every 15 s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine_lib.model import Host, HostStatistics, Vm, VmStatistics
from engine_lib.services import stats_history

# stats_history.record_minute(session, kind, rows, now) -> rows inserted
History = Callable[[Session, str, list[dict], datetime], int]

_RATES = ("net_rx_bps", "net_tx_bps", "disk_read_bps", "disk_write_bps")
_KiB_PER_MiB = 1024


def record(session: Session, host: Host, report: Mapping[str, Any], now: datetime,
           history: History | None = None) -> None:
    """Apply one statistics poll of ``host``: its figures, those of the VMs the engine
    runs there (rows of VMs no longer running there go), and a raw history sample."""
    history = history or stats_history.record_minute
    host_row = host_figures(report.get("host") or {})
    values: dict[str, Any] = {"used_memory_mib": host_row["memory_used_mib"]}
    if host_row["cpu_percent"] is not None:  # a fresh agent has no percentage yet
        values["used_cpu_percent"] = host_row["cpu_percent"]
    session.execute(update(Host).where(Host.id == host.id).values(**values)
                    .execution_options(synchronize_session=False))
    _upsert(session, HostStatistics, "host_id",
            [{"host_id": host.id, "sampled_at": now, **host_row}])

    ours = set(session.scalars(select(Vm.id).where(Vm.run_on_host_id == host.id)))
    vm_rows = [{"vm_id": vm["id"], "host_id": host.id, "sampled_at": now, **vm_figures(vm)}
               for vm in report.get("vms") or () if vm.get("id") in ours and "cpu" in vm]
    _upsert(session, VmStatistics, "vm_id", vm_rows)
    session.execute(delete(VmStatistics).where(
        VmStatistics.host_id == host.id,
        VmStatistics.vm_id.not_in([row["vm_id"] for row in vm_rows]))
        .execution_options(synchronize_session=False))

    history(session, "host", [_history_row(host.id, host_row)], now)
    if vm_rows:
        history(session, "vm", [_history_row(row["vm_id"], row) for row in vm_rows], now)


def host_figures(host: Mapping[str, Any]) -> dict[str, Any]:
    """The agent's host report -> host_statistics' figures."""
    memory_mib = int(host.get("memory_mib") or 0)
    used = int(host.get("used_memory_mib") or 0)
    load = list(host.get("load") or ()) + [None] * 3
    return {"cpu_percent": (host.get("cpu") or {}).get("percent"),
            "memory_used_mib": used,
            # What VMs could still get: page cache counts as free, as in used_memory_mib.
            "memory_free_mib": max(0, memory_mib - used),
            "load_1m": load[0], "load_5m": load[1], "load_15m": load[2],
            "running_vms": int(host.get("running_vms") or 0),
            **{key: host.get(key) for key in _RATES}}


def vm_figures(vm: Mapping[str, Any]) -> dict[str, Any]:
    """A running VM's report -> vm_statistics' figures."""
    memory = vm.get("memory") or {}
    rates = vm.get("rates") or {}
    return {"cpu_percent": (vm.get("cpu") or {}).get("percent"),
            "memory_used_mib": memory_used_mib(memory),
            "balloon_current_mib": _mib(memory.get("current_kib")),
            "balloon_target_mib": _mib(memory.get("target_kib")),
            **{key: rates.get(key) for key in _RATES}}


def memory_used_mib(memory: Mapping[str, Any]) -> int | None:
    """What the guest uses: its balloon driver's figures (available - unused) when it
    reports them; else the QEMU process's resident memory; else unknown."""
    available, unused = memory.get("available_kib"), memory.get("unused_kib")
    if available is not None and unused is not None:
        return _mib(max(0, available - unused))
    return _mib(memory.get("rss_kib"))


def _mib(kib: int | None) -> int | None:
    return None if kib is None else int(kib) // _KiB_PER_MiB


def _history_row(object_id: str, figures: Mapping[str, Any]) -> dict:
    return {"object_id": object_id, "cpu_percent": figures.get("cpu_percent"),
            "memory_used_mib": figures.get("memory_used_mib"),
            "memory_free_mib": figures.get("memory_free_mib"),
            "load_1m": figures.get("load_1m"), **{key: figures.get(key) for key in _RATES}}


def _upsert(session: Session, model: type, key: str, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE for all rows in one executemany."""
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(model.__table__)  # type: ignore[attr-defined]
    stmt = stmt.on_conflict_do_update(
        index_elements=[key],
        set_={column: stmt.excluded[column] for column in rows[0] if column != key})
    session.execute(stmt, rows)
