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
BUSY, IDLE = 30.0, 10.0  # percent of the host's CPUs: one burning vCPU of 2 CPUs is ~50


@pytest.fixture
def loaded(engine, agents, lab_guest):
    """A burning guest on h1 and an idle one on h2, both booted."""
    engine.clusters.ensure("lab", virt_type="qemu", migration_encrypted=False)
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    specs = {"load-burn": tiny_guest("load-burn", placement={"hosts": ["h1"]},
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


def agent_cpu(agents) -> dict[str, float | None]:
    """Each agent's host CPU share over WINDOW_S, as GET /stats reports it."""
    clients = {agent.name: agent.client() for agent in agents}
    for client in clients.values():
        client.stats()  # the window starts at this sample
    time.sleep(WINDOW_S)
    return {name: client.stats()["host"]["cpu"]["percent"] for name, client in clients.items()}


def test_a_busy_guest_makes_its_own_host_busy_and_no_other(engine, agents, loaded):
    assert loaded == {"load-burn": "h1", "load-idle": "h2"}
    cpu = agent_cpu(agents)
    assert cpu["h1"] is not None and cpu["h1"] > BUSY, cpu
    assert cpu["h2"] is not None and cpu["h2"] < IDLE, cpu
