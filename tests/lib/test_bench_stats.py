"""make bench-stats measures the real statistics path: its stand-in agents' answers reach
host_statistics, vm_statistics and the history through Monitor._sync_vms, and what it
counts and reports is what the engine wrote (a bench timing a path that writes nothing
would report a fine figure)."""

import json

import pytest
from sqlalchemy import func, select

from bench.stats import bench
from bench.stats.cycle import Poller, Share
from bench.stats.fleet import StandInAgent, build, host_address
from bench.stats.meters import RowCounter
from engine_lib.engine import Engine
from engine_lib.model import HostStatistics, StatsSample, VmStatistics


@pytest.fixture(scope="module")
def share():
    return Share()  # wraps the module functions once, as the bench does


def test_a_cycle_of_the_stand_in_fleet_writes_current_figures_and_a_minute_of_history(
        tmp_path, share):
    agents = {host_address(i): StandInAgent(i, seed=1) for i in range(2)}
    url = f"sqlite:///{tmp_path}/engine.db"
    engine = Engine.open(engine_dir=str(tmp_path / "e"), db_url=url,
                         agent_factory=lambda address, port: agents[address])
    try:
        build(engine, agents, vms_per_host=3)
        poller = Poller(engine, list(agents.values()), RowCounter(engine.store.engine), url,
                        share)
        opening, others = poller.minutes(2, 1, others=1)
        with engine.store.transaction(commit=False) as session:
            host_cpu = sorted(session.scalars(select(HostStatistics.cpu_percent)))
            vm_cpu = dict(session.execute(select(VmStatistics.vm_id,
                                                 VmStatistics.cpu_percent)).all())
            history = session.scalar(select(func.count()).select_from(StatsSample))
    finally:
        engine.close()
    assert host_cpu == sorted(round(a.cpu, 2) for a in agents.values())
    assert vm_cpu == {vm.id: round(vm.cpu, 2) for a in agents.values() for vm in a.vms}
    # 2 hosts + 6 VMs: a raw row each in the cycle opening the minute, none in the next.
    assert history == 8
    assert opening[0].rows["stats_samples"] == 8 and "stats_samples" not in others[0].rows
    assert opening[0].rows["vm_statistics"] == 6 and others[0].rows["vm_statistics"] == 6
    assert opening[0].record_s > 0 and opening[0].history_s > 0


def test_the_bench_reports_each_size_and_rollup_in_one_json_line(
        tmp_path, share, monkeypatch, capsys):
    monkeypatch.setattr(bench, "SIZES", (1, 2))
    monkeypatch.setattr(bench, "ROLLUP_SIZES", (2,))
    monkeypatch.setattr(bench, "VMS_PER_HOST", 2)
    monkeypatch.setattr(bench, "MONTH_OBJECTS", 1)
    monkeypatch.setattr(bench, "SHARE", share)
    result = bench.bench_backend("SQLite", f"sqlite:///{tmp_path}/engine.db",
                                 str(tmp_path / "e"))
    json.dumps(result)  # what main prints last
    assert set(result["cycle"]) == {"1", "2"}
    assert result["cycle"]["2"]["rows_minute_cycle"] > result["cycle"]["2"]["rows_other_cycle"]
    hourly = result["rollup"]["hourly"]["2"]
    # 2 hosts and 4 VMs: an hour row each from the last hour and from the day-old
    # quarter hour, which retention then drops from the raw rows.
    assert hourly["objects"] == 6 and hourly["rows_after"]["hour"] == 12
    assert hourly["rows_after"]["day"] == 6  # the day-old hour completes yesterday
    assert hourly["rows_after"]["raw"] == 6 * 60
    month = result["rollup"]["month"]
    # 30 days of minutes rolled up 5 min after: what retention keeps of each resolution.
    assert month["rows_after"] == {"raw": 24 * 60 - 5, "hour": 30 * 24 - 1, "day": 30}
    assert "SQLite: 2 hosts" in capsys.readouterr().out

