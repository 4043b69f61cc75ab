"""The engine loop's balancer relieving a crowded lab host with a real live migration.

A host is made measurably overloaded by VM count (the vm_evenly_distributed
policy): the engine stores no per-host CPU load the lab could drive up
reliably, while the number of running domains is a fact libvirt confirms.
"""

from __future__ import annotations

import threading
import time

import pytest
from test_migration import copies, tiny_guest, wait_for_console

from engine_lib.loop.balancer import Balancer, Settings

pytestmark = pytest.mark.lab


@pytest.fixture
def crowded(engine, agents, lab_guest):
    """Three guests on h1 (registered alone while they start), then h2 joins."""
    # The lab's libvirtds serve plain qemu+tcp (TLS: test_migration_tls.py).
    engine.clusters.ensure("lab", virt_type="qemu", migration_encrypted=False)
    hosts = {agent.name: agent for agent in agents}
    engine.hosts.ensure("h1", address=hosts["h1"].address, cluster="lab")
    created = []
    for name in ("bal-a", "bal-b", "bal-c"):
        created.append(engine.vms.ensure(tiny_guest(name), state="running").entity)
        assert created[-1]["host"] == "h1"
    for name in ("bal-a", "bal-b", "bal-c"):
        wait_for_console(engine, name, "kestrel-guest: up")
    engine.hosts.ensure("h2", address=hosts["h2"].address, cluster="lab")
    yield created
    for vm in created:
        engine.vms.ensure({"name": vm["name"]}, state="absent")
        assert copies(agents, vm["id"]) == {}, "a domain stayed behind"


def test_the_engine_loop_relieves_a_crowded_host_one_migration_per_round(
        engine, agents, crowded):
    engine.clusters.ensure("lab", scheduling_policy="vm_evenly_distributed",
                           scheduling_policy_properties={"high_vm_count": 1,
                                                         "migration_threshold": 1})
    stop = threading.Event()
    loop = threading.Thread(target=Balancer(engine, Settings(interval_s=1)).run, args=(stop,))
    loop.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                vm["host"] == "h2" for vm in engine.vms.info()):
            time.sleep(0.5)
        # More rounds pass: h1 2 VMs, h2 1 is within the threshold, so nothing else moves.
        time.sleep(4)
    finally:
        stop.set()
        loop.join(660)

    where = {vm["id"]: copies(agents, vm["id"]) for vm in crowded}
    assert all(len(hosts) == 1 and list(hosts.values()) == ["running"]
               for hosts in where.values()), where
    assert sorted(next(iter(h)) for h in where.values()) == ["h1", "h1", "h2"]
    [moved] = [vm for vm in engine.vms.info() if vm["host"] == "h2"]
    assert moved["status"] == "Up"
    [record] = engine.migrations.history(moved["name"])
    assert (record["source"], record["destination"], record["status"]) == ("h1", "h2",
                                                                           "succeeded")
    messages = [e["message"] for e in engine.events.info(entity_type="vm",
                                                          entity_name=moved["name"])]
    assert any(m.startswith(f"balancing: migrating vm {moved['name']} from h1 to h2 (host h1 "
                            "runs 3 VMs") for m in messages)
    assert sum(m.startswith("balancing: migrating") for vm in crowded
               for m in (e["message"] for e in engine.events.info(
                   entity_type="vm", entity_name=vm["name"]))) == 1
