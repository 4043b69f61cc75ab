"""How users read statistics: current figures on host and VM info, a window of history
(engine.stats), and bad input named by its option. On SQLite and PostgreSQL."""

from datetime import UTC, datetime, timedelta

import pytest

from engine_lib.model import Host, HostStatistics, Vm, VmStatistics
from engine_lib.protocol.errors import HostNotFound, InvalidSpec, VmNotFound
from engine_lib.services import stats_history
from engine_lib.services.common import find

VM = {"name": "vm1", "cluster": "c1", "memory": "512MiB"}


@pytest.fixture
def running(engine, cluster):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    engine.vms.ensure(VM, state="running")
    with engine.store.transaction(commit=False) as session:
        return find(session, Host, "h1").id, find(session, Vm, "vm1").id


def _poll(engine, host_id, vm_id, at):
    """What the engine's statistics poll leaves: the current rows (as loop.statistics
    writes them) and the minute's history (stats_history)."""
    figures = {"cpu_percent": 42.5, "memory_used_mib": 3000, "memory_free_mib": 1096,
               "load_1m": 1.5, "net_rx_bps": 100.0, "net_tx_bps": 50.0,
               "disk_read_bps": 4096.0, "disk_write_bps": 8192.0}
    with engine.store.transaction() as session:
        session.merge(HostStatistics(host_id=host_id, sampled_at=at, load_5m=1.2, load_15m=0.9,
                                     running_vms=1, **figures))
        session.merge(VmStatistics(vm_id=vm_id, host_id=host_id, sampled_at=at,
                                   cpu_percent=180.0, memory_used_mib=400,
                                   balloon_current_mib=512, balloon_target_mib=512))
        stats_history.record_minute(session, "host", [{"object_id": host_id, **figures}], at)
        stats_history.record_minute(session, "vm", [{"object_id": vm_id, "cpu_percent": 180.0,
                                                     "memory_used_mib": 400}], at)


def test_host_and_vm_info_show_current_figures_empty_before_any(engine, running):
    host_id, vm_id = running
    assert [h["statistics"] for h in engine.hosts.info()] == [{}, {}]
    assert engine.vms.info()[0]["statistics"] == {}

    at = datetime.now(UTC) - timedelta(seconds=5)
    _poll(engine, host_id, vm_id, at)

    h1, h2 = engine.hosts.info()
    assert h1["statistics"]["cpu_percent"] == 42.5
    assert (h1["statistics"]["memory_used_mib"], h1["statistics"]["memory_free_mib"]) == (3000, 1096)
    assert (h1["statistics"]["load_1m"], h1["statistics"]["load_15m"]) == (1.5, 0.9)
    assert h1["statistics"]["running_vms"] == 1
    assert datetime.fromisoformat(h1["statistics"]["sampled_at"]) == at
    assert h2["statistics"] == {}
    [vm] = engine.vms.info(host="h1")
    assert vm["statistics"]["cpu_percent"] == 180.0
    assert vm["statistics"]["balloon_current_mib"] == 512
    # The API's pages show the same (one query for the page's figures).
    assert engine.hosts.page(name="h1")["items"][0]["statistics"] == h1["statistics"]
    assert engine.vms.page()["items"][0]["statistics"] == vm["statistics"]
    assert engine.stats.current("host", "h1") == h1["statistics"]
    assert engine.stats.current("host", "h2") == {}


def test_history_of_a_window_at_the_resolution_it_needs(engine, running):
    host_id, vm_id = running
    now = datetime.now(UTC)
    for minutes_ago in (90, 30, 2):
        _poll(engine, host_id, vm_id, now - timedelta(minutes=minutes_ago))

    day = engine.stats.host("h1")
    assert (day["kind"], day["name"], day["resolution"]) == ("host", "h1", "raw")
    assert day["current"]["cpu_percent"] == 42.5
    assert len(day["samples"]) == 3
    assert [s["cpu_percent"] for s in day["samples"]] == [42.5] * 3
    times = [datetime.fromisoformat(s["at"]) for s in day["samples"]]
    assert times == sorted(times)
    until = datetime.fromisoformat(day["until"])
    assert until - datetime.fromisoformat(day["since"]) == timedelta(hours=24)

    hour = engine.stats.host("h1", period="1h")
    assert len(hour["samples"]) == 2
    # An explicit window, in the VM's history.
    since = (now - timedelta(minutes=100)).isoformat()
    vm = engine.stats.vm("vm1", since=since, period="20m")
    assert [s["cpu_percent"] for s in vm["samples"]] == [180.0]
    assert engine.stats.vm("vm1", period="30d")["resolution"] == "hour"
    assert engine.stats.info("vm", "vm1", period="1y")["resolution"] == "day"


def test_unknown_objects_and_kinds_are_named(engine, running):
    with pytest.raises(HostNotFound, match="host 'nope' does not exist"):
        engine.stats.host("nope")
    with pytest.raises(VmNotFound, match="VM 'nope' does not exist"):
        engine.stats.vm("nope", period="1h")
    with pytest.raises(HostNotFound):
        engine.stats.current("host", "nope")
    with pytest.raises(InvalidSpec, match="kind: must be host or vm"):
        engine.stats.info("cluster", "c1")
    # The window is checked before the object is looked up (test_stats_window has every case).
    with pytest.raises(InvalidSpec, match="^period: must be a number and a unit"):
        engine.stats.vm("vm1", period="yesterday")
