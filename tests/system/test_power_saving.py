"""Power saving with power management on the lab: an emptied host is parked, switched off
by the lab's fence agent (scripts/fence_kestrel_lab, the fence-agents interface) and
brought back when capacity is asked for.

The engine loop's power saving round (engine_lib.loop.power_saving) runs here in the
test's process, one round at a time, so nothing waits for its one-minute interval.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import pytest
from agent_fixtures import restart_agent
from test_ha import FENCE_AGENT, agent_pid, fence, wait_until

from engine_lib.loop.power_saving import PARK, POWER_OFF, PowerSaving
from engine_lib.protocol.errors import KestrelError
from kestrel_lab import hostfs
from kestrel_lab import hosts as lab_hosts
from kestrel_lab.fence import boot_script

pytestmark = pytest.mark.lab

SPARE, PARKED = "h2", "h3"


@pytest.fixture
def farm(engine, agents, lab, lab_guest):
    """Cluster "ps" (power_saving, automatic power management, no grace, one spare):
    h1 runs a VM, h2 and h3 are empty, every host has the lab's fence agent.

    Afterwards every host is on with its agent running, and the VM is gone."""
    by_name = {handle.name: handle for handle in agents}
    state_dir = lab[0].state_dir
    for host in lab:  # the agent "unit": started at power on
        boot = Path(hostfs.source(host.root, lab_hosts.BOOT_SCRIPT))
        boot.write_text(boot_script(sys.executable))
        boot.chmod(0o755)
    engine.config.fence_agents_file.write_text(f"{FENCE_AGENT}\n")
    engine.clusters.ensure("ps", virt_type="qemu", scheduling_policy="power_saving",
                           scheduling_policy_properties={
                               "enable_automatic_host_power_management": 1,
                               "host_power_off_grace_minutes": 0, "hosts_in_reserve": 1})

    def register(name):
        engine.hosts.ensure(name, address=by_name[name].address, cluster="ps",
                            power_management={"agent": Path(FENCE_AGENT).name, "options": {
                                "plug": name, "state_dir": state_dir}})

    register("h1")  # alone, so the VM starts there
    engine.vms.ensure({"name": "ps-vm", "cluster": "ps", "memory": "128MiB", "machine": "pc",
                       "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
                       "cmdline": "console=ttyS0"}, state="running")
    register(SPARE)
    register(PARKED)
    try:
        yield PowerSaving(engine)
    finally:
        with contextlib.suppress(KestrelError):
            engine.vms.ensure({"name": "ps-vm"}, state="absent")
        for host in lab:
            if not lab_hosts.powered_on(host.name, state_dir):
                fence("on", host.name, state_dir)
            handle = by_name[host.name]
            pid = agent_pid(host)
            if pid is None:
                restart_agent(handle)
            else:
                handle.pid = pid  # the boot script's agent: the fixture's handle follows it
            Path(hostfs.source(host.root, lab_hosts.BOOT_SCRIPT)).unlink(missing_ok=True)


def answers(agents, name) -> bool:
    handle = next(a for a in agents if a.name == name)
    try:
        handle.client().host_info(timeout=3)
    except KestrelError:
        return False
    return True


def test_the_spare_beyond_the_reserve_is_switched_off_and_brought_back_on_request(
        engine, agents, lab, farm):
    started = time.monotonic()
    state_dir = lab[0].state_dir
    assert [(s.action, s.host) for s in farm.cycle()] == [(PARK, PARKED)]
    assert [(s.action, s.host) for s in farm.cycle()] == [(POWER_OFF, PARKED)]
    # The lab's fence agent pulled the plug: nothing of h3 runs, its agent is silent.
    assert not lab_hosts.powered_on(PARKED, state_dir)
    assert not answers(agents, PARKED)
    assert lab_hosts.powered_on(SPARE, state_dir) and answers(agents, SPARE)
    info = {h["name"]: (h["status"], h["power_saving"]) for h in engine.hosts.info()}
    assert info == {"h1": ("Up", ""), SPARE: ("Up", ""), PARKED: ("Maintenance", "off")}
    assert farm.cycle() == []  # consolidated: it stays still
    messages = [e["message"] for e in engine.events.info(entity_type="host",
                                                         entity_name=PARKED)]
    assert any(m.startswith("power saving: host is in Maintenance (it runs no VMs") for m in
               messages)
    assert any(m.startswith("power saving: host powered off (parked for 0 min of grace): "
                            "power off confirmed by fence_kestrel_lab status") for m in messages)

    assert engine.power_saving.request_capacity("ps", "the test needs a host") == PARKED
    assert lab_hosts.powered_on(PARKED, state_dir)
    # Activated by the round once its agent (started by its boot script) answers.
    wait_until(lambda: farm.cycle() is not None and engine.hosts.info(name=PARKED)[0][
        "status"] == "Up", 90, f"{PARKED} Up again", interval=1)
    assert answers(agents, PARKED)
    assert engine.hosts.info(name=PARKED)[0]["power_saving"] == ""
    assert [vm["host"] for vm in engine.vms.info(name="ps-vm")] == ["h1"]
    messages = [e["message"] for e in engine.events.info(entity_type="host",
                                                         entity_name=PARKED)]
    assert any(m.startswith("power saving: host powered on (the test needs a host)")
               for m in messages)
    assert "power saving: host is Up again (its agent answers after the power on)" in messages
    print(f"power saving lab scenario: {time.monotonic() - started:.1f}s")
