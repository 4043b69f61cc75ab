"""Live migration for real: engine, agents and libvirt daemons of lab hosts.

Every test ends by asking the libvirt daemons themselves (virsh inside each lab
host) where the VM's domain exists: exactly one copy, running, on the host the
database names. The tiny guest is idle; the failure tests slow the migration
down with a bandwidth limit (80 Mbps, ~10 MiB/s) so that the fault lands mid-flight.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from agent_fixtures import is_alive, restart_agent

from engine_lib.protocol import convergence
from engine_lib.protocol.errors import InvalidSpec, MigrationFailed
from kestrel_lab import network as lab_network

pytestmark = pytest.mark.lab

SLOW_MBPS = 80  # about 10 MiB/s: the idle 128 MiB guest (~90 MiB sent) then takes ~9 s


def tiny_guest(name: str, **extra) -> dict:
    return {"name": name, "cluster": "lab", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
            "disks": [{"name": "data", "size": "64MiB", "storage_domain": "data"}],
            "nics": [{"name": "nic1", "network": "kestrelmgmt"}], **extra}


@pytest.fixture
def cluster(engine, agents, lab_guest):
    # The lab's libvirtds serve plain qemu+tcp (TLS: test_migration_tls.py).
    engine.clusters.ensure("lab", virt_type="qemu", migration_encrypted=False)
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    return "lab"


@pytest.fixture
def guest(engine, cluster, agents):
    """A running tiny guest, pinned to h1 and h2 (so "the other host" is well defined);
    removed at the end wherever it is, and no domain of it may stay on any host."""
    created = []

    def make(name: str, **extra) -> dict:
        spec = tiny_guest(name, **{"placement": {"hosts": ["h1", "h2"]}, **extra})
        vm = engine.vms.ensure(spec, state="running").entity
        created.append(vm)
        wait_for_console(engine, name, "kestrel-guest: nics")
        return vm

    yield make
    for vm in created:
        engine.vms.ensure({"name": vm["name"]}, state="absent")
        assert copies(agents, vm["id"]) == {}, "a domain stayed behind"


def wait_for_console(engine, name: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    console = ""
    while time.monotonic() < deadline:
        console = engine.vms.console(name)
        if text in console:
            return console
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not on the console of {name} after {timeout}s:\n{console}")


def copies(agents, vm_id: str) -> dict[str, str]:
    """Host -> libvirt state of the VM's domain, for every host whose libvirtd has one."""
    found = {}
    for agent in agents:
        result = agent.run(["virsh", "-c", "qemu:///system", "domstate", vm_id], text=True,
                           check=False)
        if result.returncode == 0:
            found[agent.name] = result.stdout.strip()
    return found


def other(vm: dict) -> str:
    return "h2" if vm["host"] == "h1" else "h1"


def by_name(agents, name: str):
    return next(a for a in agents if a.name == name)


def wait_for_progress(engine, name: str, timeout: float = 30) -> dict:
    """The running migration of ``name`` once the source reported data moving."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for migration in engine.migrations.active():
            if migration["vm"] == name and migration["progress"].get("data_processed_mib"):
                return migration
        time.sleep(0.2)
    raise AssertionError(f"no progress of the migration of {name} within {timeout}s")


def assert_guest_runs(agent, vm_id: str, within: float = 15.0) -> None:
    """The guest's vCPUs make progress (not merely "running" but paused inside). An idle
    tickless guest may not use its CPU for a second or more, so give it some time."""
    before = agent.client().vm_status(vm_id)["cpu_time_ns"]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if agent.client().vm_status(vm_id)["cpu_time_ns"] > before:
            return
    raise AssertionError(f"the guest's CPU time stayed at {before} ns for {within:.0f} s")


def assert_runs_only_on(engine, agents, vm: dict, host: str) -> None:
    assert copies(agents, vm["id"]) == {host: "running"}
    row = engine.vms.info(vm["name"])[0]
    assert (row["status"], row["host"]) == ("Up", host)
    assert by_name(agents, host).client().vm_status(vm["id"])["status"] == "Up"


def test_a_running_vm_moves_live_to_the_host_the_scheduler_picks(engine, agents, guest):
    vm = guest("mig1")
    source = vm["host"]
    samples = []

    outcome = engine.migrations.migrate("mig1", progress=samples.append)

    result = outcome.entity
    assert outcome.changed and result["status"] == "succeeded"
    assert (result["source"], result["destination"]) == (source, other(vm))
    assert_runs_only_on(engine, agents, vm, other(vm))
    # The final downtime, as libvirt measured it, within the policy's limit.
    assert result["policy"] == "minimal_downtime"
    assert 0 < result["downtime_ms"] <= convergence.limit_of("minimal_downtime")
    assert result["progress"]["data_processed_mib"] > 0
    assert samples and all("data_remaining_mib" in s and "iteration" in s for s in samples)
    # The guest keeps running there: its vCPU time grows.
    assert_guest_runs(by_name(agents, other(vm)), vm["id"])
    # The attempt stays readable, and the audit log tells the story.
    [record] = engine.migrations.history("mig1")
    assert record["status"] == "succeeded" and record["downtime_ms"] == result["downtime_ms"]
    messages = [e["message"] for e in engine.events.info(entity_type="vm", entity_name="mig1")]
    assert any(m.startswith(f"migration from {source} to {other(vm)} started") for m in messages)
    assert any(m.startswith(f"migrated from {source} to {other(vm)}") for m in messages)

    # And back, to a named host (not the one it runs on).
    with pytest.raises(InvalidSpec) as info:
        engine.migrations.migrate("mig1", host=other(vm))
    assert info.value.field == "host" and "already runs" in info.value.reason
    back = engine.migrations.migrate("mig1", host=source, policy="suspend_workload").entity
    assert back["status"] == "succeeded" and back["destination"] == source
    assert_runs_only_on(engine, agents, vm, source)
    # The destination defined the domain persistently, as a fresh start does: stop works there.
    assert engine.vms.ensure({"name": "mig1"}, state="stopped", force=True).entity["status"] \
        == "Down"
    assert copies(agents, vm["id"]) == {}



# -- failures: exactly one running copy, on the source, and the database agrees ----------


@pytest.fixture
def in_flight(engine):
    """Start a slowed-down migration in a thread; yields (start, result) helpers."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    futures = []

    def start(name: str, **options) -> dict:
        futures.append(pool.submit(engine.migrations.migrate, name,
                                   bandwidth_mbps=SLOW_MBPS, **options))
        return wait_for_progress(engine, name)

    yield start, lambda: futures[-1].result(timeout=240)
    pool.shutdown(wait=True)


def assert_failed_and_stayed_on_source(engine, agents, vm: dict, source: str, outcome,
                                       reason: str) -> None:
    with pytest.raises(MigrationFailed) as info:
        outcome()
    assert reason in info.value.message and f"it runs on {source}" in info.value.message
    wait_for_copies(agents, vm["id"], {source: "running"})
    assert_runs_only_on(engine, agents, vm, source)
    assert_guest_runs(by_name(agents, source), vm["id"])
    [record] = engine.migrations.history(vm["name"])
    assert record["status"] == "failed" and reason in record["error"]
    assert engine.migrations.active() == []


def wait_for_copies(agents, vm_id: str, wanted: dict, timeout: float = 90) -> None:
    """libvirt drops an aborted incoming domain on its own schedule (after a cut link,
    once its keepalive gives up); wait for that, then the copies must be exactly these."""
    deadline = time.monotonic() + timeout
    while copies(agents, vm_id) != wanted and time.monotonic() < deadline:
        time.sleep(1)
    assert copies(agents, vm_id) == wanted


def test_a_destination_that_refuses_leaves_the_vm_on_its_source(engine, agents, guest):
    vm = guest("refused")
    source, destination = vm["host"], by_name(agents, other(vm))
    hook_dir = "/etc/kestrel/hooks/before_vm_migrate_destination"
    destination.run(["mkdir", "-p", hook_dir])
    destination.run(["sh", "-c", f'printf "#!/bin/sh\\necho no room for $vmId >&2\\nexit 1\\n"'
                                 f' > {hook_dir}/50_refuse && chmod 755 {hook_dir}/50_refuse'])
    try:
        assert_failed_and_stayed_on_source(
            engine, agents, vm, source,
            lambda: engine.migrations.migrate("refused"),
            "hook before_vm_migrate_destination/50_refuse failed with exit status 1")
    finally:
        destination.run(["rm", "-rf", hook_dir])
    assert vm["id"] not in {v["id"] for v in destination.client().list_vms()}


def test_a_cut_link_mid_flight_leaves_the_vm_on_its_source(engine, agents, guest, in_flight):
    start, outcome = in_flight
    vm = guest("cut")
    source, destination = vm["host"], other(vm)
    start("cut")
    veth = lab_network._veth(destination)
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        with pytest.raises(MigrationFailed) as info:
            outcome()
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    assert "destination agent stopped answering" in info.value.message
    wait_for_copies(agents, vm["id"], {source: "running"})
    assert_runs_only_on(engine, agents, vm, source)
    assert engine.migrations.history("cut")[0]["status"] == "failed"


def test_a_destination_agent_killed_mid_flight_leaves_the_vm_on_its_source(
        engine, agents, guest, in_flight):
    start, outcome = in_flight
    vm = guest("orphan")
    source, destination = vm["host"], by_name(agents, other(vm))
    start("orphan")
    os.kill(destination.pid, signal.SIGKILL)
    try:
        assert_failed_and_stayed_on_source(engine, agents, vm, source, outcome,
                                           "destination agent stopped answering")
    finally:
        while is_alive(destination.pid):
            time.sleep(0.1)
        restart_agent(destination)
    assert vm["id"] not in {v["id"] for v in destination.client().list_vms()}


def test_a_source_agent_restarted_mid_flight_leaves_the_vm_on_its_source(
        engine, agents, guest, in_flight):
    start, outcome = in_flight
    vm = guest("restart")
    source = by_name(agents, vm["host"])
    start("restart")
    os.kill(source.pid, signal.SIGKILL)
    while is_alive(source.pid):
        time.sleep(0.1)
    restart_agent(source)
    assert_failed_and_stayed_on_source(engine, agents, vm, source.name, outcome,
                                       "source agent lost track of it")


def test_a_cancelled_migration_leaves_the_vm_on_its_source(engine, agents, guest, in_flight):
    start, outcome = in_flight
    vm = guest("cancel")
    source = vm["host"]
    running = start("cancel")
    assert running["status"] == "running" and running["destination"] == other(vm)
    assert engine.vms.info("cancel")[0]["status"] == "MigratingFrom"

    assert engine.migrations.cancel("cancel").changed

    result = outcome().entity
    assert result["status"] == "cancelled"
    wait_for_copies(agents, vm["id"], {source: "running"})
    assert_runs_only_on(engine, agents, vm, source)
    assert engine.migrations.history("cancel")[0]["status"] == "cancelled"
    assert engine.migrations.cancel("cancel").changed is False  # nothing runs any more


# -- the module and the CLI ---------------------------------------------------------------


def test_the_vm_migrate_module_predicts_in_check_mode_then_moves_the_vm(
        engine, agents, guest, playbook):
    vm = guest("played")
    source, destination = vm["host"], other(vm)
    task = {"kestrel.virt.vm_migrate": {"name": "played", "policy": "suspend_workload"}}

    predicted, moved = playbook.run([{**task, "check_mode": True}, task])

    assert predicted["changed"] and not predicted.get("failed")
    assert (predicted["migration"]["source"], predicted["migration"]["destination"]) == \
        (source, destination)
    assert predicted["migration"]["downtime_ms"] is None
    # Check mode moved nothing: the one attempt on record is the real run's.
    assert [m["id"] for m in engine.migrations.history("played")] == [moved["migration"]["id"]]
    assert moved["changed"] and moved["migration"]["status"] == "succeeded"
    assert moved["migration"]["destination"] == destination
    assert 0 < moved["migration"]["downtime_ms"] <= moved["migration"]["policy_limit_ms"] == 5000
    assert_runs_only_on(engine, agents, vm, destination)

    [failed] = playbook.run([{"kestrel.virt.vm_migrate": {"name": "played", "host": destination,
                                                          "bandwidth": -1}}])
    assert failed["failed"] and "bandwidth_mbps" in failed["msg"]
    assert_runs_only_on(engine, agents, vm, destination)


def test_kestrel_vm_migrate_prints_progress_and_the_downtime(engine, engine_dir, agents, guest):
    vm = guest("cli")
    source, destination = vm["host"], other(vm)
    kestrel = [os.path.join(os.path.dirname(sys.executable), "kestrel")]
    where = ["--engine-dir", str(engine_dir), "--db-url", engine.store.url]

    run = subprocess.run(kestrel + ["vm", "migrate", "cli", "--bandwidth", "400"] + where,
                         capture_output=True, text=True, timeout=300)

    assert run.returncode == 0, run.stderr
    assert "migrating:" in run.stderr and "MiB left, iteration" in run.stderr  # not a TTY
    assert run.stdout.startswith(f"VM cli succeeded: {source} -> {destination} in ")
    assert "downtime " in run.stdout and "ms (policy minimal_downtime, at most 500 ms)" \
        in run.stdout
    assert_runs_only_on(engine, agents, vm, destination)
    history = json.loads(subprocess.run(kestrel + ["vm", "migrations", "cli"] + where,
                                        capture_output=True, text=True, check=True).stdout)
    assert [(m["source"], m["destination"], m["status"]) for m in history] == \
        [(source, destination, "succeeded")]
    assert history[0]["bandwidth_mbps"] == 400


def test_a_host_sends_at_most_two_migrations_at_once(engine, agents, guest):
    vms = [guest(f"busy{i}", placement={"hosts": ["h1"]}) for i in range(3)]
    assert {vm["host"] for vm in vms} == {"h1"}
    for vm in vms:  # free to move now
        engine.vms.ensure({"name": vm["name"], "placement": {"hosts": ["h1", "h2", "h3"]}})
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        # One to each other host: neither receives two, but h1 sends two.
        moving = [pool.submit(engine.migrations.migrate, vm["name"], host=host,
                              bandwidth_mbps=SLOW_MBPS)
                  for vm, host in zip(vms[:2], ("h2", "h3"))]
        for vm, future in zip(vms[:2], moving):
            try:
                wait_for_progress(engine, vm["name"], timeout=60)
            except AssertionError:
                future.result(timeout=1)  # its own error says more
                raise
        with pytest.raises(MigrationFailed) as info:
            engine.migrations.migrate("busy2", host="h2")
        assert "this host already sends 2 migrations (at most 2)" in info.value.message
        assert_runs_only_on(engine, agents, vms[2], "h1")
        assert [f.result(timeout=240).entity["status"] for f in moving] == ["succeeded"] * 2
    assert_runs_only_on(engine, agents, vms[0], "h2")
    assert_runs_only_on(engine, agents, vms[1], "h3")
