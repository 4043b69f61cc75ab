"""The engine follows the agents' event streams: status changes reach the database at once.

No Monitor runs in these tests: whatever the database learns, it learns from
the event follower.
"""

from __future__ import annotations

import threading
import time

import pytest
from agent_fixtures import restart_agent, stop_agent

from engine_lib.loop.event_follower import EventFollower

pytestmark = pytest.mark.lab

VIRSH = ["virsh", "-c", "qemu:///system"]


def tiny_guest(name: str) -> dict:
    return {"name": name, "cluster": "lab", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
            "disks": [{"name": "data", "size": "64MiB", "storage_domain": "data"}]}


@pytest.fixture
def cluster(engine, agents, lab_guest):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    return "lab"


@pytest.fixture
def follower(engine):
    follower = EventFollower(engine, poll_timeout=5, hosts_interval=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), daemon=True)
    thread.start()
    yield follower
    stop.set()
    thread.join(10)


@pytest.fixture
def guest(engine, cluster, agents):
    vm = engine.vms.ensure(tiny_guest("follow1"), state="running").entity
    yield vm, next(a for a in agents if a.name == vm["host"])
    engine.vms.ensure({"name": "follow1"}, state="absent")


def wait_for(predicate, timeout: float) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - started


def wait_for_console(engine, name: str, text: str, timeout: float = 90) -> None:
    wait_for(lambda: text in engine.vms.console(name), timeout)


def vm_row(engine, name: str) -> dict:
    return engine.vms.info(name)[0]


def following(follower, host: str) -> bool:
    return any(ref.name == host and f.instance is not None
               for ref, (f, _) in follower._followers.items())


def test_a_guest_that_powers_itself_off_is_down_in_the_engine_within_seconds(
        engine, guest, follower):
    vm, agent = guest
    wait_for_console(engine, "follow1", "built-in shell")
    wait_for(lambda: following(follower, agent.name), 10)

    # The power button pressed on the host, not through the engine: the guest powers off.
    agent.run([*VIRSH, "shutdown", vm["id"]])
    took = wait_for(lambda: vm_row(engine, "follow1")["status"] == "Down", 10)
    row = vm_row(engine, "follow1")
    assert (row["exit_reason"], row["host"]) == ("user shutdown", None)
    assert took < 5, f"the engine learned of the power-off after {took:.1f}s"
    messages = [e["message"] for e in engine.events.info(entity_name="follow1")]
    assert "VM is Down: user shutdown" in messages
    # Removed from its host, as a stop does: its disk can be deleted with the VM.
    wait_for(lambda: vm["id"] not in [v["id"] for v in agent.client().list_vms()], 5)


def test_the_follower_survives_an_agent_restart(engine, guest, follower):
    vm, agent = guest
    wait_for(lambda: following(follower, agent.name), 10)
    stop_agent(agent.pid)
    restart_agent(agent)
    # A change made after the restart: the follower must notice the new agent
    # process (its numbering starts again) and still see the change.
    agent.client().pause_vm(vm["id"])
    wait_for(lambda: vm_row(engine, "follow1")["status"] == "Paused", 40)
    agent.client().resume_vm(vm["id"])
    wait_for(lambda: vm_row(engine, "follow1")["status"] == "Up", 10)
