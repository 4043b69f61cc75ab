"""A start slower than the engine's agent client waits for, on real agents and libvirt.

The before_vm_start hook holds the start until the test lets it go; the engine's
agent client gives up after 2 s (instead of its 30 s, against hooks that may take
60 s each). The engine must show the VM waiting on the host it sent it to, never
Down; a second ``state: running`` must not start a second copy elsewhere; once the
host's start finishes, the VM is Up there and exactly one domain runs in the lab.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from engine_lib.broker import AgentClient
from engine_lib.engine import Engine
from engine_lib.loop.monitoring import Intervals, Monitor
from engine_lib.protocol.errors import AgentUnreachable, Conflict, KestrelError

HOOK_DIR = "/etc/kestrel/hooks/before_vm_start"
HOOK = f"{HOOK_DIR}/50_slow"
RELEASE = "/etc/kestrel/ghost-release"  # /etc/kestrel is private to each lab host
CLIENT_TIMEOUT_S = 2.0
# The hook waits for RELEASE, at most 50 s (under the agent's 60 s hook timeout).
SLOW_HOOK = (f"#!/bin/sh\nn=0\nwhile [ ! -e {RELEASE} ] && [ $n -lt 500 ]; do\n"
             "  sleep 0.1; n=$((n+1))\ndone\n").encode()
SPEC = {"name": "ghost", "cluster": "ghost", "memory": "128MiB", "machine": "pc",
        "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
        "disks": [{"name": "data", "size": "64MiB", "storage_domain": "data"}]}


@pytest.fixture
def impatient_engine(engine_dir, engine_pki_dir, tmp_path):
    """An engine whose agent client waits CLIENT_TIMEOUT_S for any answer."""
    def factory(address, port):
        return AgentClient(address, port, engine_pki_dir, timeout=CLIENT_TIMEOUT_S)

    eng = Engine.open(engine_dir=str(engine_dir), db_url=f"sqlite:///{tmp_path}/engine.db",
                      agent_factory=factory)
    yield eng
    eng.close()


@pytest.fixture
def slow_hosts(impatient_engine, agents, lab_guest):
    """Every lab host in cluster "ghost", each with the slow hook; all undone after."""
    impatient_engine.clusters.ensure("ghost", virt_type="qemu")
    for agent in agents:
        agent.run(["mkdir", "-p", HOOK_DIR])
        agent.run(["chmod", "755", "/etc/kestrel/hooks", HOOK_DIR])
        agent.run(["rm", "-f", RELEASE])
        agent.run(["sh", "-c", 'cat > "$1" && chmod 755 "$1"', "install", HOOK], input=SLOW_HOOK)
        impatient_engine.hosts.ensure(agent.name, address=agent.address, cluster="ghost")
    yield {agent.name: agent for agent in agents}
    for agent in agents:
        agent.run(["touch", RELEASE])  # a start still held finishes now
        agent.run(["rm", "-f", HOOK])
    vms = impatient_engine.vms.info("ghost")
    for agent in agents if vms else []:  # every copy, wherever the engine thinks it runs
        for step in (agent.client().destroy_vm, agent.client().remove_vm):
            with contextlib.suppress(KestrelError):
                step(vms[0]["id"])
    try:
        impatient_engine.vms.ensure({"name": "ghost"}, state="absent")
    finally:
        for agent in agents:
            agent.run(["rm", "-f", RELEASE])


def domains_running(agents, vm_id: str) -> list[str]:
    """The lab hosts whose libvirtd runs the VM now."""
    return [agent.name for agent in agents.values()
            if vm_id in agent.run(["virsh", "-q", "-c", "qemu:///system", "list", "--uuid"],
                                  text=True).stdout.split()]


def test_a_start_slower_than_the_client_waits_never_makes_a_second_copy(
        impatient_engine, slow_hosts):
    engine = impatient_engine
    monitor = Monitor(engine, Intervals())

    started = time.monotonic()
    with pytest.raises(AgentUnreachable) as info:
        engine.vms.ensure(SPEC, state="running")
    assert time.monotonic() - started < 20  # the client gave up; the hook still holds
    vm = engine.vms.info("ghost")[0]
    host = vm["host"]
    assert (vm["status"], host) == ("WaitForLaunch", host) and host in slow_hosts
    assert f"waits on host {host}" in info.value.message

    # Asked again while the host has not answered: refused, nothing placed anywhere.
    with pytest.raises(Conflict):
        engine.vms.ensure(SPEC, state="running")
    # The host lists the VM as starting: the Monitor keeps it waiting there.
    monitor.cycle()
    vm = engine.vms.info("ghost")[0]
    assert (vm["status"], vm["host"]) == ("WaitForLaunch", host)
    assert domains_running(slow_hosts, vm["id"]) == []

    slow_hosts[host].run(["touch", RELEASE])  # the hook ends: the agent's start goes on
    deadline = time.monotonic() + 60
    while engine.vms.info("ghost")[0]["status"] != "Up" and time.monotonic() < deadline:
        monitor.cycle()
        time.sleep(0.5)
    vm = engine.vms.info("ghost")[0]
    assert (vm["status"], vm["host"]) == ("Up", host)
    assert domains_running(slow_hosts, vm["id"]) == [host]
    assert engine.vms.ensure(SPEC, state="running").changed is False
    assert domains_running(slow_hosts, vm["id"]) == [host]
