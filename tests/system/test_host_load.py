"""Each lab host's CPU load is its own: a guest burning CPU on h1 makes h1, and only h1, busy.

The lab hosts share this machine's CPUs, so the node's counters would show
every host the load of all of them; their agents read their own cgroups
(``[statistics] cpu_accounting = cgroup``). The burning guest boots with
``idle=poll`` (kestrel_lab.guest.BURN_CMDLINE): its vCPU spins from boot on.
"""

from __future__ import annotations

import time

import pytest
from test_migration import tiny_guest, wait_for_console

from kestrel_lab import guest

pytestmark = pytest.mark.lab

# A CPU share is a measurement over time: the agents compare two samples this far apart.
WINDOW_S = 3.0
# Percent of a host's CPUs. The machine is shared (tests of up to 8 people at once), so a
# burning vCPU gets anything from a fifth to all of one CPU: h1 is judged by its own
# VM's figure over the same window and against h2, h2 against an absolute bound.
IDLE = 10.0
# An idle tiny guest uses a few percent of a CPU once its init has loaded its modules.
SETTLED = 5.0

@pytest.fixture
def loaded(engine, agents, lab_guest):
    """A burning guest on h1 and an idle one on h2, both booted."""
    engine.clusters.ensure("lab", virt_type="qemu", migration_encrypted=False)
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    # Two vCPUs: a bigger share of a crowded machine than one.
    specs = {"load-burn": tiny_guest("load-burn", placement={"hosts": ["h1"]},
                                     cpu={"cores": 2},
                                     cmdline=f"console=ttyS0 {guest.BURN_CMDLINE}"),
             "load-idle": tiny_guest("load-idle", placement={"hosts": ["h2"]})}
    try:
        for spec in specs.values():
            engine.vms.ensure(spec, state="running")
        # Booting under TCG is busy too: measure once both guests are up.
        for name in specs:
            wait_for_console(engine, name, "kestrel-guest: nics")
        yield {vm["name"]: vm["host"] for vm in engine.vms.info() if vm["name"] in specs}
    finally:
        for name in specs:
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


def settled(agents, timeout: float = 60) -> dict[str, dict]:
    """The first window in which the idle guest is idle (its init's last background
    work, loading modules under TCG, ends a few seconds after it prints its NICs)."""
    deadline = time.monotonic() + timeout
    while True:
        cpu = measure(agents)
        idle = cpu["h2"]["vms"]["load-idle"]
        if idle is not None and idle < SETTLED:
            return cpu
        if time.monotonic() > deadline:
            raise AssertionError(f"the idle guest did not settle within {timeout} s: {cpu}")


def test_a_busy_guest_makes_its_own_host_busy_and_no_other(engine, agents, loaded):
    assert loaded == {"load-burn": "h1", "load-idle": "h2"}
    cpu = settled(agents)
    h1, h2 = cpu["h1"], cpu["h2"]
    # h1 carries its burning VM's load (VM CPU is top-style: 100 = one host CPU)...
    assert h1["host"] >= 0.8 * h1["vms"]["load-burn"] / h1["cpus"], cpu
    # ...and none of it shows on h2, whose node counters would show the whole machine's.
    assert h2["host"] < IDLE and h1["host"] > 3 * h2["host"], cpu
