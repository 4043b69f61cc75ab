"""Per-VM and per-host counters: libvirt's flat stats record turned into the agent's report.

The record below is what libvirt 9.0 + QEMU 7.2 returned in the lab for a running
tiny guest (one qcow2 disk, one virtio NIC, a balloon) with the groups the agent
asks for; the same call against real VMs is in tests/system/test_agent_devices.py.
"""

from __future__ import annotations

import uuid

import libvirt
import pytest

from engine_lib.agent import stats
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.vms import Hypervisor

RAW = {
    "state.state": 1, "state.reason": 1,
    "cpu.time": 5_213_000_000, "cpu.user": 4_100_000_000, "cpu.system": 1_000_000_000,
    "balloon.current": 131072, "balloon.maximum": 131072, "balloon.rss": 98304,
    "balloon.available": 120000, "balloon.unused": 90000, "balloon.usable": 95000,
    "balloon.last-update": 1700000000,
    "net.count": 1, "net.0.name": "vnet3", "net.0.rx.bytes": 1500, "net.0.rx.pkts": 12,
    "net.0.rx.errs": 0, "net.0.rx.drop": 1, "net.0.tx.bytes": 900, "net.0.tx.pkts": 7,
    "net.0.tx.errs": 0, "net.0.tx.drop": 0,
    "block.count": 1, "block.0.name": "vda", "block.0.path": "/srv/data/img/vol",
    "block.0.rd.reqs": 120, "block.0.rd.bytes": 2_000_000, "block.0.rd.times": 5_000_000,
    "block.0.wr.reqs": 3, "block.0.wr.bytes": 4096, "block.0.wr.times": 10_000,
    "block.0.fl.reqs": 1, "block.0.fl.times": 100, "block.0.allocation": 200_704,
    "block.0.capacity": 67_108_864, "block.0.physical": 200_704,
}


def test_a_running_vm_reports_cpu_memory_balloon_disks_and_nics():
    report = stats.vm_stats(RAW)
    assert report["cpu"] == {"time_ns": 5_213_000_000, "user_ns": 4_100_000_000,
                             "system_ns": 1_000_000_000}
    assert report["memory"] == {"current_kib": 131072, "maximum_kib": 131072, "rss_kib": 98304,
                                "available_kib": 120000, "unused_kib": 90000,
                                "usable_kib": 95000, "last_update": 1700000000}
    assert report["disks"] == [{"name": "vda", "path": "/srv/data/img/vol", "rd_reqs": 120,
                                "rd_bytes": 2_000_000, "rd_times": 5_000_000, "wr_reqs": 3,
                                "wr_bytes": 4096, "wr_times": 10_000, "fl_reqs": 1,
                                "fl_times": 100, "allocation": 200_704,
                                "capacity": 67_108_864, "physical": 200_704}]
    assert report["nics"] == [{"name": "vnet3", "rx_bytes": 1500, "rx_pkts": 12, "rx_errs": 0,
                               "rx_drop": 1, "tx_bytes": 900, "tx_pkts": 7, "tx_errs": 0,
                               "tx_drop": 0}]


def test_a_vm_without_devices_or_balloon_reports_empty_lists():
    report = stats.vm_stats({"state.state": 1, "state.reason": 1, "cpu.time": 1})
    assert (report["disks"], report["nics"], report["memory"]) == ([], [], {})


def test_only_the_reported_groups_are_asked_for():
    # VCPU, perf, dirty-rate, memory bandwidth... each costs monitor round trips per VM.
    assert stats.GROUPS == (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                            | libvirt.VIR_DOMAIN_STATS_BALLOON
                            | libvirt.VIR_DOMAIN_STATS_INTERFACE
                            | libvirt.VIR_DOMAIN_STATS_BLOCK)


def test_cpu_percent_needs_a_previous_sample(monkeypatch):
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(stats.time, "monotonic", lambda: next(clock))
    sampler = stats.Sampler()
    assert sampler.vm_cpu_percent("a", 1_000_000_000) is None
    # 3 s of CPU in 2 s of wall time: one and a half host CPUs, as top shows it.
    assert sampler.vm_cpu_percent("a", 4_000_000_000) == 150.0


@pytest.fixture
def hv():
    hypervisor = Hypervisor(AgentConfig(name="t", address="127.0.0.1", port=0,
                                        libvirt_uri="test:///default", ca="/ca", cert="/c",
                                        key="/k", source="test"))
    yield hypervisor
    hypervisor.close()


def test_host_stats_count_vms_and_report_only_the_agents_own(hv):
    from engine_lib.protocol import metadata

    vm_id = str(uuid.uuid4())
    hv.start(f"<domain type='test'><name>st-{vm_id[:8]}</name><uuid>{vm_id}</uuid>"
             f"<metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'/></metadata>"
             "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")
    try:
        report = hv.stats()
        # The test driver's own "test" domain runs too, but is not ours.
        assert [vm["id"] for vm in report["vms"]] == [vm_id]
        assert report["vms"][0]["status"] == "Up"
        host = report["host"]
        assert host["running_vms"] >= 2 and host["vm_count"] >= 1
        assert 0 < host["free_memory_mib"] <= host["memory_mib"]
        assert host["cpu"]["percent"] is None  # first sample: no percentage yet
        assert host["cpu"]["idle_ns"] > 0
        assert hv.vm_stats(vm_id)["id"] == vm_id
    finally:
        hv.destroy(vm_id)


def test_vm_rates_are_bytes_per_second_since_the_previous_sample(monkeypatch):
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr(stats.time, "monotonic", lambda: next(clock))
    sampler = stats.Sampler()
    assert sampler.vm_rates("a", (1000, 0, 5000, 0)) == dict.fromkeys(stats.RATES)
    assert sampler.vm_rates("a", (3000, 400, 9000, 2000)) == {
        "net_rx_bps": 1000.0, "net_tx_bps": 200.0, "disk_read_bps": 2000.0,
        "disk_write_bps": 1000.0}
    # A NIC unplugged: its bytes leave the sum, which is no negative traffic.
    assert sampler.vm_rates("a", (0, 400, 9000, 2000))["net_rx_bps"] == 0.0


def test_io_counters_sum_a_vms_nics_and_disks():
    report = stats.vm_stats({**RAW, "net.count": 2, "net.1.rx.bytes": 500, "net.1.tx.bytes": 100,
                             "block.count": 2, "block.1.rd.bytes": 1000,
                             "block.1.wr.bytes": 4})
    assert stats.io_counters(report) == (2000, 1000, 2_001_000, 4100)


def test_host_rates_sum_the_vms_and_are_unknown_on_the_first_poll():
    vms = [{"net_rx_bps": 10.0, "net_tx_bps": 1.0, "disk_read_bps": 5.0, "disk_write_bps": 0.0},
           dict.fromkeys(stats.RATES)]  # a VM new since the last poll adds nothing
    assert stats.host_rates(True, vms) == dict.fromkeys(stats.RATES)
    assert stats.host_rates(False, vms) == {"net_rx_bps": 10.0, "net_tx_bps": 1.0,
                                            "disk_read_bps": 5.0, "disk_write_bps": 0.0}
    assert stats.host_rates(False, []) == dict.fromkeys(stats.RATES, 0.0)


def _start(hv, name: str) -> str:
    from engine_lib.protocol import metadata

    vm_id = str(uuid.uuid4())
    hv.start(f"<domain type='test'><name>{name}</name><uuid>{vm_id}</uuid>"
             f"<metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'/></metadata>"
             "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")
    return vm_id


class CountingConnection:
    """A libvirt connection that counts the calls made through it."""

    def __init__(self, conn):
        self._conn, self.calls = conn, []

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self._conn, name)


def test_the_stats_poll_lists_every_vm_with_the_counters_of_the_running_ones(hv, monkeypatch):
    up, down = _start(hv, "st-up"), _start(hv, "st-down")
    hv.destroy(down)  # Down in the registry, as GET /vms lists it
    try:
        conn = CountingConnection(hv.connection())
        monkeypatch.setattr(hv, "connection", lambda: conn)
        first = hv.stats()
        # One libvirt call for every VM's counters, none per VM.
        assert conn.calls.count("getAllDomainStats") == 1
        assert not {"domainListGetStats", "memoryStats"} & set(conn.calls)
        vms = {vm["id"]: vm for vm in first["vms"]}
        assert list(vms) == [vm["id"] for vm in hv.list_vms()]
        listed = {vm["id"]: vm for vm in hv.list_vms()}
        assert set(vms[down]) == set(listed[down])  # no counters when Down
        assert vms[down]["status"] == "Down" and "cpu" not in vms[down]
        assert set(listed[up]) <= set(vms[up])  # GET /vms' keys, then the counters
        assert {"cpu", "memory", "disks", "nics", "rates"} <= set(vms[up])
        assert vms[up]["rates"] == dict.fromkeys(stats.RATES)  # nothing to compare yet
        host = first["host"]
        assert len(host["load"]) == 3 and all(isinstance(x, float) for x in host["load"])
        assert 0 <= host["used_memory_mib"] <= host["memory_mib"]
        assert {host[key] for key in stats.RATES} == {None}

        second = hv.stats()
        up_vm = next(vm for vm in second["vms"] if vm["id"] == up)
        assert set(up_vm["rates"].values()) == {0.0}  # the test driver's VM moves no bytes
        assert {second["host"][key] for key in stats.RATES} == {0.0}
    finally:
        hv.destroy(up)
