"""Each lab host's CPU load is its own: a guest burning CPU on h1 makes h1, and only h1, busy.

The lab hosts share this machine's CPUs, so the node's counters would show
every host the load of all of them; their agents read their own cgroups
(``[statistics] cpu_accounting = cgroup``). The burning guest boots with
``idle=poll`` (kestrel_lab.guest.BURN_CMDLINE): its vCPUs spin from boot on.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select
from test_migration import tiny_guest

from engine_lib.loop.monitoring import Monitor
from engine_lib.model import Host, HostStatistics, Vm, VmStatistics
from kestrel_lab import guest

pytestmark = pytest.mark.lab

# A CPU share is a measurement over time: the agents compare two samples this far apart.
WINDOW_S = 3.0
# Percent of a host's CPUs. The machine is shared (tests of up to 8 people at once), so a
# burning vCPU gets anything from a tenth to all of one CPU: h1 is judged by its own
# VM's figure over the same window and against h2, h2 against an absolute bound.
IDLE = 10.0
# An idle tiny guest uses a few percent of a CPU once its init has loaded its modules.
SETTLED = 5.0


@pytest.fixture
def lab_vms(engine, agents, lab_guest):
    """The lab cluster with every lab host; its VMs removed at the end."""
    engine.clusters.ensure("lab", virt_type="qemu", migration_encrypted=False)
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    names: list[str] = []

    def run(name: str, **extra) -> str:
        names.append(name)
        return engine.vms.ensure(tiny_guest(name, **extra), state="running").entity["host"]

    yield run
    for name in names:
        engine.vms.ensure({"name": name}, state="absent")


def measure(agents) -> dict[str, dict]:
    """Each agent's GET /stats over WINDOW_S: host CPU share, its VMs' CPU (by name), CPUs."""
    clients = {agent.name: agent.client() for agent in agents}
    for client in clients.values():
        client.stats()  # the window starts at this sample
    time.sleep(WINDOW_S)
    figures = {}
    for name, client in clients.items():
        report = client.stats()
        figures[name] = {"host": report["host"]["cpu"]["percent"],
                         "vms": {vm["name"]: vm["cpu"].get("percent")
                                 for vm in report["vms"] if "cpu" in vm},
                         "cpus": client.host_info()["cpus"]}
    return figures


def settled(agents, timeout: float = 240) -> None:
    """Once the idle guest is idle: booted, and its init's last background work (loading
    modules under TCG) done. Slow when the shared machine is crowded."""
    deadline = time.monotonic() + timeout
    while True:
        cpu = measure(agents)
        idle = cpu["h2"]["vms"]["load-idle"]
        if idle is not None and idle < SETTLED:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the idle guest did not settle within {timeout} s: {cpu}")


def engine_cpu(engine) -> dict[str, dict]:
    """What the engine stored from its VM poll over WINDOW_S: each host's CPU share (the
    scheduler's Host.used_cpu_percent and host_statistics), its VMs' CPU by name."""
    monitor = Monitor(engine)
    monitor.cycle()  # the window starts at this poll
    time.sleep(WINDOW_S)
    monitor.cycle()
    with engine.store.transaction(commit=False) as session:
        figures = {host.name: {"host": host.used_cpu_percent, "vms": {},
                               "statistics": session.get(HostStatistics, host.id).cpu_percent}
                   for host in session.scalars(select(Host))}
        for name, host_name, percent in session.execute(
                select(Vm.name, Host.name, VmStatistics.cpu_percent)
                .join(VmStatistics, VmStatistics.vm_id == Vm.id)
                .join(Host, Host.id == VmStatistics.host_id)):
            figures[host_name]["vms"][name] = percent
    return figures


def check_h1_alone_busy(cpu: dict[str, dict], cpus: int) -> None:
    h1, h2 = cpu["h1"], cpu["h2"]
    # h1 carries its burning VM's load (VM CPU is top-style: 100 = one host CPU)...
    assert h1["host"] >= 0.8 * h1["vms"]["load-burn"] / cpus, cpu
    # ...and none of it shows on h2, whose node counters would show the whole machine's.
    assert h2["host"] < IDLE and h1["host"] > 3 * h2["host"], cpu


def test_a_busy_guest_makes_its_own_host_busy_and_no_other(engine, agents, lab_vms):
    assert lab_vms("load-idle", placement={"hosts": ["h2"]}) == "h2"
    settled(agents)
    # Busy from its first instruction (booting under TCG is busy, then idle=poll spins);
    # two vCPUs: a bigger share of a crowded machine than one.
    assert lab_vms("load-burn", placement={"hosts": ["h1"]}, cpu={"cores": 2},
                   cmdline=f"console=ttyS0 {guest.BURN_CMDLINE}") == "h1"
    cpu = measure(agents)
    check_h1_alone_busy(cpu, cpu["h1"]["cpus"])
    # The engine's VM poll sees the same: what the scheduler and the balancer read.
    stored = engine_cpu(engine)
    check_h1_alone_busy(stored, cpu["h1"]["cpus"])
    assert all(figures["statistics"] == figures["host"] for figures in stored.values()), stored
