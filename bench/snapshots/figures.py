"""The pure half of make bench-snapshots: medians, ratios against the goals, the JSON line.

A pair whose kestrel side could not run (the agent lacks the route) still reports its raw
reference, with the kestrel figures ``None`` and ``unavailable`` saying why, so a partial
run is never mistaken for a met goal.
"""

from __future__ import annotations

import json
import statistics

MIB = 1024 * 1024
# Goals: time ratios kestrel / raw at most this; incremental bytes at most this times what
# the guest changed plus METADATA_BYTES (the qcow2 header, L1/L2 and refcount clusters).
GOALS = {"snapshot_ratio": 1.2, "merge_ratio": 1.2, "incremental_bytes_ratio": 1.2}
METADATA_BYTES = 1 * MIB


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def time_pair(kestrel_s: list[float], raw_s: list[float], goal: float,
              unavailable: str = "") -> dict:
    """Medians in ms of both sides and kestrel's ratio to the raw reference."""
    kestrel, raw = median(kestrel_s), median(raw_s)
    ratio = None if kestrel is None or not raw else kestrel / raw
    return {"kestrel_ms": _round(kestrel, 1000), "raw_ms": _round(raw, 1000),
            "ratio": _round(ratio), "goal_max": goal, "rounds": len(raw_s),
            "met": None if ratio is None else ratio <= goal, "unavailable": unavailable}


def incremental(backup_bytes: list[int], changed_bytes: int, goal: float,
                unavailable: str = "") -> dict:
    """An incremental backup's file size against what the guest changed since the last."""
    size = median([float(b) for b in backup_bytes])
    ratio = None if size is None else size / changed_bytes
    limit = goal * changed_bytes + METADATA_BYTES
    return {"backup_mib": _round(size, 1 / MIB), "changed_mib": round(changed_bytes / MIB, 3),
            "ratio": _round(ratio), "goal_max": goal, "metadata_allowance_mib":
            METADATA_BYTES / MIB, "rounds": len(backup_bytes),
            "met": None if size is None else size <= limit, "unavailable": unavailable}


def throughput(data_bytes: int, backup_s: list[float], convert_s: list[float],
               unavailable: str = "", job_s: list[float] | None = None) -> dict:
    """MiB/s of a full backup and of ``qemu-img convert`` of the same disk; their ratio;
    and of libvirt's backup job alone (``job_s``: what the rest of the backup adds)."""
    backup, convert, job = median(backup_s), median(convert_s), median(job_s or [])
    backup_rate = None if not backup else data_bytes / MIB / backup
    convert_rate = data_bytes / MIB / convert if convert else None
    ratio = None if backup_rate is None or not convert_rate else backup_rate / convert_rate
    return {"data_mib": round(data_bytes / MIB, 1), "backup_s": _round(backup),
            "convert_s": _round(convert), "backup_mib_s": _round(backup_rate, digits=1),
            "convert_mib_s": _round(convert_rate, digits=1), "ratio": _round(ratio),
            "libvirt_job_s": _round(job),
            "libvirt_job_mib_s": _round(data_bytes / MIB / job if job else None, digits=1),
            "rounds": len(convert_s), "unavailable": unavailable}


def summary(figures: dict) -> str:
    """The last line make bench-snapshots prints: one JSON object."""
    return json.dumps(figures, sort_keys=True)


def describe(name: str, pair: dict) -> str:
    """One line for a person."""
    if "kestrel_ms" in pair:
        line = f"{name}: raw {pair['raw_ms']} ms"
        if pair["kestrel_ms"] is not None:
            line += (f", kestrel {pair['kestrel_ms']} ms -> {pair['ratio']}x "
                     f"(goal <= {pair['goal_max']}: {'met' if pair['met'] else 'MISSED'})")
    elif "backup_mib" in pair:
        line = f"{name}: guest changed {pair['changed_mib']} MiB"
        if pair["backup_mib"] is not None:
            line += (f", incremental backup {pair['backup_mib']} MiB -> {pair['ratio']}x "
                     f"(goal <= {pair['goal_max']}x + {pair['metadata_allowance_mib']} MiB: "
                     f"{'met' if pair['met'] else 'MISSED'})")
    else:
        line = (f"{name}: {pair['data_mib']} MiB, qemu-img convert {pair['convert_mib_s']} "
                "MiB/s")
        if pair["backup_mib_s"] is not None:
            line += f", full backup {pair['backup_mib_s']} MiB/s -> {pair['ratio']}x"
        if pair.get("libvirt_job_s") is not None:
            line += (f" (libvirt's backup job alone {pair['libvirt_job_mib_s']} MiB/s, "
                     f"{pair['libvirt_job_s']} s of {pair['backup_s']} s)")
    if pair["unavailable"]:
        line += f" [kestrel side not run: {pair['unavailable']}]"
    return line + f" ({pair['rounds']} rounds, medians)"


def _round(value: float | None, scale: float = 1, digits: int = 3) -> float | None:
    return None if value is None else round(value * scale, digits)
