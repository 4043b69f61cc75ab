"""The host's CPU share from the node's counters or from the agent's own cgroup."""

from __future__ import annotations

import dataclasses

import pytest

from engine_lib.agent import config, host_cpu
from engine_lib.agent.vms import Hypervisor
from engine_lib.protocol.errors import InvalidSpec


def test_node_cpu_is_the_busy_share_since_the_last_sample():
    samples = iter([{"user": 10, "kernel": 10, "idle": 80, "iowait": 0},
                    {"user": 40, "kernel": 20, "idle": 140, "iowait": 0}])
    node = host_cpu.NodeCpu(lambda: next(samples))
    assert node.percent() is None  # nothing to compare with yet
    assert node.percent() == 40.0


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns


def test_cgroup_v1_usage_per_wall_time_and_cpu(tmp_path):
    usage = tmp_path / "cpuacct" / "cpuacct.usage"
    usage.parent.mkdir()
    usage.write_text("5000000000\n")
    clock = Clock()
    cpu = host_cpu.source(config.loads("[statistics]\ncpu_accounting = cgroup\n"),
                          read_node=lambda: pytest.fail("cgroup accounting read the node"),
                          cgroup_root=str(tmp_path))
    assert isinstance(cpu, host_cpu.CgroupCpu) and cpu.usage_file == str(usage)
    cpu.cpus, cpu._clock = 4, clock
    assert cpu.percent() is None
    # 2 s of wall time on 4 CPUs = 8 CPU-seconds; the cgroup used 3 of them.
    clock.ns += 2_000_000_000
    usage.write_text("8000000000\n")
    assert cpu.percent() == 37.5
    clock.ns += 1_000_000_000  # idle second
    assert cpu.percent() == 0.0


def test_cgroup_v2_usage_comes_from_cpu_stat(tmp_path):
    stat = tmp_path / "cpu.stat"
    stat.write_text("usage_usec 1000000\nuser_usec 800000\nsystem_usec 200000\n")
    clock = Clock()
    cpu = host_cpu.CgroupCpu(host_cpu.cgroup_usage_file(str(tmp_path)), cpus=2, clock=clock)
    assert cpu.percent() is None
    clock.ns += 1_000_000_000
    stat.write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    assert cpu.percent() == 75.0  # 1.5 CPU-seconds of 2


def test_cgroup_accounting_without_a_cgroup_file_is_a_clear_error(tmp_path):
    cfg = config.loads("[statistics]\ncpu_accounting = cgroup\n", "agent.conf")
    with pytest.raises(InvalidSpec) as err:
        host_cpu.source(cfg, read_node=dict, cgroup_root=str(tmp_path))
    assert err.value.field == "agent.conf [statistics] cpu_accounting"
    assert "cpuacct.usage" in err.value.message


def test_the_agent_reports_the_configured_source(tmp_path, monkeypatch):
    usage = tmp_path / "cpuacct" / "cpuacct.usage"
    usage.parent.mkdir()
    usage.write_text("0\n")
    monkeypatch.setattr(host_cpu, "CGROUP_ROOT", str(tmp_path))
    cfg = dataclasses.replace(config.loads("[agent]\nlibvirt_uri = test:///default\n"),
                              cpu_accounting="cgroup")
    hv = Hypervisor(cfg)
    try:
        assert hv.stats()["host"]["cpu"]["percent"] is None
        # Far more CPU time than the wall time since: the cgroup's figure, whatever the node's.
        usage.write_text(f"{10**18}\n")
        report = hv.stats()["host"]["cpu"]
        assert report["percent"] == 100.0
        assert report["idle_ns"] > 0  # the node's counters are still reported as they are
    finally:
        hv.close()


def _role_agent_conf(**variables) -> str:
    import os

    import jinja2
    import yaml

    role = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "host")
    with open(os.path.join(role, "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(role, "templates")),
                             trim_blocks=True)
    env.filters["bool"] = bool
    return env.get_template("agent.conf.j2").render(
        {**defaults, "ansible_managed": "test", "kestrel_host_name": "h1",
         "kestrel_host_address": "10.0.0.1", **variables})


def test_the_host_role_writes_cpu_accounting_node_unless_told():
    assert config.loads(_role_agent_conf()).cpu_accounting == "node"
    assert config.loads(_role_agent_conf(kestrel_host_cpu_accounting="cgroup")) \
        .cpu_accounting == "cgroup"
