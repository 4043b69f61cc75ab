"""make bench-snapshots' pure parts: the ratios against the goals, the JSON line, the
metadata it hands the agent for a chain, and a pair whose agent route is missing
reporting why instead of a figure."""

import json
import xml.etree.ElementTree as ET

from bench.snapshots import bench, domain, figures
from engine_lib.broker import AgentApi
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import NotFound


def test_a_time_pair_is_kestrels_median_over_the_raw_median_against_its_goal():
    pair = figures.time_pair([0.30, 0.11, 0.12], [0.10, 0.50, 0.10], goal=1.2)
    assert pair["kestrel_ms"] == 120.0 and pair["raw_ms"] == 100.0
    assert pair["ratio"] == 1.2 and pair["met"] is True and pair["rounds"] == 3
    assert figures.time_pair([0.13], [0.10], goal=1.2)["met"] is False


def test_a_pair_without_its_kestrel_side_reports_none_and_why_never_a_met_goal():
    pair = figures.time_pair([], [0.1, 0.2], goal=1.2, unavailable="no route")
    assert (pair["kestrel_ms"], pair["ratio"], pair["met"]) == (None, None, None)
    assert "not run: no route" in figures.describe("live snapshot", pair)


def test_an_incremental_backup_may_exceed_the_change_only_by_the_ratio_and_the_metadata():
    changed = 8 * figures.MIB
    near = figures.incremental([changed + 512 * 1024], changed, goal=1.2)
    assert near["met"] is True and near["ratio"] == 1.062 and near["changed_mib"] == 8.0
    limit = int(1.2 * changed) + figures.METADATA_BYTES
    assert figures.incremental([limit], changed, 1.2)["met"] is True
    assert figures.incremental([limit + 1], changed, 1.2)["met"] is False
    # A full copy of a 256 MiB disk is far off, whatever the allowance.
    assert figures.incremental([256 * figures.MIB], changed, 1.2)["met"] is False


def test_throughput_compares_mib_per_second_of_backup_and_convert():
    row = figures.throughput(128 * figures.MIB, [2.0, 4.0, 2.0], [1.0, 1.0, 3.0])
    assert (row["backup_mib_s"], row["convert_mib_s"], row["ratio"]) == (64.0, 128.0, 0.5)
    assert figures.throughput(128 * figures.MIB, [], [1.0])["ratio"] is None
    # libvirt's job alone, from its own figure: what the rest of the backup adds shows.
    row = figures.throughput(128 * figures.MIB, [2.0], [1.0], job_s=[0.5, 1.0, 1.5])
    assert (row["libvirt_job_s"], row["libvirt_job_mib_s"]) == (1.0, 128.0)
    assert "libvirt's backup job alone 128.0 MiB/s, 1.0 s of 2.0 s" in figures.describe(
        "full backup", row)


def test_the_summary_is_one_json_line_that_round_trips():
    found = {"live_snapshot": figures.time_pair([0.1], [0.1], 1.2), "bench_seconds": 3.0}
    line = figures.summary(found)
    assert "\n" not in line and json.loads(line) == found


def test_the_metadata_for_a_chain_names_each_volumes_parent_as_the_agent_reads_it():
    base = domain.volume("img")
    top = domain.volume("img")
    node = ET.fromstring(f"<domain><metadata>{domain.metadata_xml('ua-1', [top, base])}"
                         "</metadata></domain>")
    refs = metadata.read(node).volumes
    assert [(r.alias, r.volume, r.parent, r.parent_format) for r in refs] == [
        ("ua-1", top["volume"], f"img/{base['volume']}", "qcow2"),
        ("", base["volume"], "", "")]


class _Client(AgentApi):
    """An agent from before the snapshot route: it answers 404."""

    def create_snapshot(self, vm_id, body):
        raise NotFound("API path", f"/vms/{vm_id}/snapshots")


class _Raw:
    vm_id, quiesce = "raw-vm", True

    def __init__(self):
        self.calls: list[str] = []

    def snapshot(self):
        self.calls.append("snapshot")
        return 0.1

    def merge_top(self):
        self.calls.append("merge")
        return 0.2


class _Helper:
    def guest_writes(self, vm_id, offsets, length, seed):
        return len(offsets) * length


def test_the_raw_halves_run_every_round_when_the_agent_lacks_the_route(monkeypatch):
    monkeypatch.setattr(bench, "ROUNDS", 2)
    kestrel = bench.Kestrel(_Client(), "vm", "ua-1", domain.volume("img"))
    raw = _Raw()
    found = bench.SnapshotRounds(kestrel, raw, _Helper()).run()
    assert raw.calls == ["snapshot", "merge"] * 3  # round 0 warms up, uncounted
    snap, merge = found["live_snapshot"], found["live_merge"]
    assert snap["raw_ms"] == 100.0 and snap["rounds"] == 2 and snap["kestrel_ms"] is None
    assert snap["unavailable"].startswith("the agent answered 404")
    assert merge["unavailable"] == "needs the agent's snapshot route"
    assert merge["raw_ms"] == 200.0 and merge["met"] is None
