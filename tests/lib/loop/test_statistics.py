"""The VM poll's figures applied by the engine (engine_lib.loop.statistics), on SQLite and
PostgreSQL: current figures apart from the versioned rows, in bulk statements."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from conftest import FakeAgent
from sqlalchemy import event, select, update

from engine_lib.loop import statistics
from engine_lib.loop.monitoring import Monitor
from engine_lib.model import Host, HostStatistics, Vm, VmStatistics
from engine_lib.services import stats_history

T0 = datetime(2026, 12, 6, 12, 0, 30, tzinfo=UTC)
RATES = ("net_rx_bps", "net_tx_bps", "disk_read_bps", "disk_write_bps")


class History:
    """Stands in for stats_history.record_minute: records what it was handed."""

    def __init__(self):
        self.calls = []

    def __call__(self, session, kind, rows, now):
        self.calls.append((kind, rows, now))
        return len(rows)


@pytest.fixture
def world(engine, cluster):
    """h1 runs vm1..vm3 and h2 runs vm4, as the engine sees it."""
    for name, address in (("h1", "10.0.0.1"), ("h2", "10.0.0.2")):
        engine.hosts.ensure(name, address=address, cluster=cluster)
    for i in range(1, 5):
        engine.vms.ensure({"name": f"vm{i}", "cluster": cluster, "memory": 256})
    with engine.store.transaction() as session:
        hosts = {h.name: h.id for h in session.scalars(select(Host))}
        vms = {v.name: v.id for v in session.scalars(select(Vm))}
        for name, host in (("vm1", "h1"), ("vm2", "h1"), ("vm3", "h1"), ("vm4", "h2")):
            session.execute(update(Vm).where(Vm.id == vms[name])
                            .values(run_on_host_id=hosts[host], status="Up"))
    return hosts, vms


def vm_report(vm_id, cpu=None, memory=None, rates=None, status="Up"):
    return {"id": vm_id, "status": status, "cpu": {"percent": cpu}, "memory": memory or {},
            "disks": [], "nics": [], "rates": rates or dict.fromkeys(RATES)}


def host_report(cpu=None, **extra):
    return {"cpu": {"percent": cpu}, "memory_mib": 4096, "free_memory_mib": 1000,
            "used_memory_mib": 1500, "load": [0.5, 0.25, 0.1], "running_vms": 3,
            "net_rx_bps": 10.0, "net_tx_bps": 20.0, "disk_read_bps": 30.0,
            "disk_write_bps": 40.0, **extra}


def apply(engine, host_id, report, now=T0, history=None):
    history = history or History()
    with engine.store.transaction() as session:
        statistics.record(session, session.get(Host, host_id), report, now, history=history)
    return history


def rows(engine, model):
    with engine.store.transaction(commit=False) as session:
        found = [SimpleNamespace(**{c.key: getattr(row, c.key) for c in model.__table__.columns})
                 for row in session.scalars(select(model))]
    return {row.vm_id if model is VmStatistics else row.host_id: row for row in found}


def test_a_poll_writes_the_figures_of_the_host_and_of_the_vms_the_engine_runs_there(
        engine, world):
    hosts, vms = world
    with engine.store.transaction(commit=False) as session:
        host_version = session.get(Host, hosts["h1"]).version
        vm_versions = {v.id: v.version for v in session.scalars(select(Vm))}
    balloon = {"current_kib": 262144, "target_kib": 196608, "rss_kib": 300000,
               "available_kib": 250000, "unused_kib": 100000}
    history = apply(engine, hosts["h1"], {"host": host_report(cpu=37.5), "vms": [
        vm_report(vms["vm1"], cpu=150.0, memory=balloon,
                  rates={"net_rx_bps": 1.0, "net_tx_bps": 2.0, "disk_read_bps": 3.0,
                         "disk_write_bps": 4.0}),
        vm_report(vms["vm2"], memory={"current_kib": 262144, "rss_kib": 204800}),
        {"id": vms["vm3"], "status": "Down", "exit_reason": "x"},  # no counters: not running
        vm_report(vms["vm4"], cpu=99.0),  # the engine runs it on h2: a stray copy's figures
        vm_report("a-stranger", cpu=99.0)]})

    host = rows(engine, HostStatistics)[hosts["h1"]]
    assert (host.cpu_percent, host.memory_used_mib, host.memory_free_mib, host.load_1m,
            host.load_5m, host.load_15m, host.running_vms, host.net_rx_bps,
            host.disk_write_bps) == (37.5, 1500, 2596, 0.5, 0.25, 0.1, 3, 10.0, 40.0)
    vm_rows = rows(engine, VmStatistics)
    assert set(vm_rows) == {vms["vm1"], vms["vm2"]}
    vm1 = vm_rows[vms["vm1"]]
    # The balloon driver's figures when the guest reports them (available - unused).
    assert (vm1.host_id, vm1.cpu_percent, vm1.memory_used_mib, vm1.balloon_current_mib,
            vm1.balloon_target_mib, vm1.net_rx_bps, vm1.disk_write_bps) == \
        (hosts["h1"], 150.0, 146, 256, 192, 1.0, 4.0)
    vm2 = vm_rows[vms["vm2"]]
    assert (vm2.cpu_percent, vm2.memory_used_mib, vm2.balloon_target_mib) == (None, 200, None)

    with engine.store.transaction(commit=False) as session:
        h1 = session.get(Host, hosts["h1"])
        # The scheduler's figures, written without a new row version: a module editing
        # the host meanwhile keeps its own.
        assert (h1.used_cpu_percent, h1.used_memory_mib, h1.version) == \
            (37.5, 1500, host_version)
        assert {v.id: v.version for v in session.scalars(select(Vm))} == vm_versions

    (kind, host_rows, now), (vm_kind, vm_history, _) = history.calls
    assert (kind, now, vm_kind) == ("host", T0, "vm")
    assert host_rows == [{"object_id": hosts["h1"], "cpu_percent": 37.5,
                          "memory_used_mib": 1500, "memory_free_mib": 2596, "load_1m": 0.5,
                          "net_rx_bps": 10.0, "net_tx_bps": 20.0, "disk_read_bps": 30.0,
                          "disk_write_bps": 40.0}]
    assert sorted(row["object_id"] for row in vm_history) == sorted([vms["vm1"], vms["vm2"]])


def test_the_next_poll_updates_rows_and_drops_those_of_vms_that_left_the_host(engine, world):
    hosts, vms = world
    apply(engine, hosts["h2"], {"host": host_report(), "vms": [vm_report(vms["vm4"], 5.0)]})
    apply(engine, hosts["h1"], {"host": host_report(cpu=10.0), "vms": [
        vm_report(vms["vm1"], 1.0), vm_report(vms["vm2"], 2.0)]})
    later = T0 + timedelta(seconds=15)
    # vm2 stopped: the agent no longer reports it running. A fresh agent has no host CPU.
    apply(engine, hosts["h1"], {"host": host_report(cpu=None, used_memory_mib=2000),
                                "vms": [vm_report(vms["vm1"], 80.0)]}, now=later)
    vm_rows = rows(engine, VmStatistics)
    assert {vm_id: row.cpu_percent for vm_id, row in vm_rows.items()} == \
        {vms["vm1"]: 80.0, vms["vm4"]: 5.0}  # h2's VM is not h1's to drop
    assert vm_rows[vms["vm1"]].sampled_at.replace(tzinfo=UTC) == later
    host = rows(engine, HostStatistics)[hosts["h1"]]
    assert (host.cpu_percent, host.memory_used_mib) == (None, 2000)
    with engine.store.transaction(commit=False) as session:
        h1 = session.get(Host, hosts["h1"])
        # No percentage this poll: the scheduler keeps the last one it had.
        assert (h1.used_cpu_percent, h1.used_memory_mib) == (10.0, 2000)


def test_a_migrated_vm_has_one_row_on_its_new_host(engine, world):
    hosts, vms = world
    apply(engine, hosts["h1"], {"host": host_report(), "vms": [vm_report(vms["vm1"], 1.0)]})
    with engine.store.transaction() as session:
        session.execute(update(Vm).where(Vm.id == vms["vm1"])
                        .values(run_on_host_id=hosts["h2"]))
    apply(engine, hosts["h2"], {"host": host_report(), "vms": [vm_report(vms["vm1"], 7.0)]})
    apply(engine, hosts["h1"], {"host": host_report(), "vms": []})
    row = rows(engine, VmStatistics)[vms["vm1"]]
    assert (row.host_id, row.cpu_percent) == (hosts["h2"], 7.0)


def test_the_statements_do_not_grow_with_the_vms(engine, cluster):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    for i in range(20):
        engine.vms.ensure({"name": f"many{i}", "cluster": cluster, "memory": 64})
    with engine.store.transaction() as session:
        host_id = session.scalars(select(Host.id)).one()
        session.execute(update(Vm).values(run_on_host_id=host_id, status="Up"))
        vm_ids = list(session.scalars(select(Vm.id)))

    def statements(count):
        seen = []

        def note(conn, cursor, statement, parameters, context, executemany):
            seen.append(statement.split()[0])

        event.listen(engine.store.engine, "before_cursor_execute", note)
        try:
            apply(engine, host_id, {"host": host_report(),
                                    "vms": [vm_report(v, 1.0) for v in vm_ids[:count]]})
        finally:
            event.remove(engine.store.engine, "before_cursor_execute", note)
        return seen

    two, twenty = statements(2), statements(20)
    assert len(twenty) == len(two)
    # the host (loaded by the caller), its row, its statistics, our VMs, their statistics,
    # the stale ones
    assert [s.upper() for s in twenty if s.upper() != "BEGIN"] == \
        ["SELECT", "UPDATE", "INSERT", "SELECT", "INSERT", "DELETE"]


class PollingAgent(FakeAgent):
    """An agent the engine must poll through GET /stats alone."""

    def list_vms(self):
        raise AssertionError("the VM poll asked GET /vms besides GET /stats")

    def stats(self):
        self._check()
        return {"host": host_report(cpu=55.0),
                "vms": [vm_report(vm_id, 12.5) for vm_id, status in self.vms.items()
                        if status == "Up"]}


def test_the_monitor_polls_stats_once_and_records_them_with_their_history(
        engine, cluster, agents):
    agents["10.0.0.1"] = PollingAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    vm = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256}, state="running")
    Monitor(engine, clock=lambda: T0).cycle()
    assert engine.vms.info("vm1")[0]["status"] == "Up"
    assert rows(engine, VmStatistics)[vm.entity["id"]].cpu_percent == 12.5
    host_id, host = next(iter(rows(engine, HostStatistics).items()))
    assert host.cpu_percent == 55.0
    with engine.store.transaction(commit=False) as session:
        history = stats_history.history(session, "host", host_id, T0 - timedelta(minutes=1), T0)
        vm_history = stats_history.history(session, "vm", vm.entity["id"],
                                           T0 - timedelta(minutes=1), T0)
    assert [(s["at"], s["cpu_percent"], s["load_1m"]) for s in history] == \
        [("2026-12-06T12:00:00+00:00", 55.0, 0.5)]
    assert [s["cpu_percent"] for s in vm_history] == [12.5]


def test_a_failure_to_record_statistics_does_not_stop_the_status_sync(
        engine, cluster, agents, monkeypatch, caplog):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    vm = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256}, state="running")
    agents["10.0.0.1"].vms[vm.entity["id"]] = "Paused"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(statistics, "record", broken)
    Monitor(engine, clock=lambda: T0).cycle()
    assert engine.vms.info("vm1")[0]["status"] == "Paused"
    assert "could not record the statistics of host h1" in caplog.text
