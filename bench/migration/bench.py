"""make bench-migration: live migration through the engine vs raw ``virsh migrate --live``.

On lab hosts h1 and h2 (brought up if the lab is down, taken down again then),
with real agents started there as the system tests start them and an engine on
a fresh SQLite database, one tiny guest (128 MiB, kernel + busybox initramfs,
a qcow2 disk on the shared "data" domain, a NIC) boots, then moves back and
forth. Each round, side by side on the same guest and the same two daemons:
  engine  A -> B   ``engine.migrations.migrate`` (incoming prepare on B, peer-to-peer
                   migration driven by A's agent, progress polled, result checked
                   through both agents, the database updated) - wall time of the call;
  raw     B -> A   ``virsh migrate --live --p2p --persistent --undefinesource --unsafe``
  raw     A -> B   run inside the source host against qemu+tcp://<dest>/system,
                   the same flags the agent uses - wall time of virsh;
  engine  B -> A.
The guest is idle (the lab guest does not dirty memory). Downtimes are libvirt's
own measurement at switchover (completed job statistics). The last line is one
JSON object with the figures.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "system"))  # how the system tests run agents

from agent_fixtures import start_agent, stop_agent

import kestrel_lab
from engine_lib import pki
from engine_lib.engine import Engine
from engine_lib.protocol import convergence

ROUNDS = 3
GOAL_RATIO = 1.2
POLICY = "minimal_downtime"
FLAGS = ["--live", "--p2p", "--persistent", "--undefinesource", "--unsafe"]


def guest_spec() -> dict:
    return {"name": "bench-mig", "cluster": "bench", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
            "cmdline": "console=ttyS0", "placement": {"hosts": ["h1", "h2"]},
            "disks": [{"name": "data", "size": "64MiB", "storage_domain": "data"}],
            "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


def virsh(host, *args: str) -> str:
    return kestrel_lab.run_in(host.name, ["virsh", "-c", "qemu:///system", *args],
                              host.state_dir, capture_output=True, text=True,
                              check=True).stdout


def raw_migrate(source, destination, vm_id: str) -> tuple[float, int | None]:
    started = time.monotonic()
    virsh(source, "migrate", *FLAGS, vm_id, f"qemu+tcp://{destination.address}/system")
    elapsed = time.monotonic() - started
    downtime = None
    for line in virsh(destination, "domjobinfo", vm_id, "--completed").splitlines():
        if line.startswith("Total downtime:"):
            downtime = int(line.split(":")[1].split()[0])
    return elapsed, downtime


def engine_migrate(engine, destination) -> tuple[float, int | None]:
    started = time.monotonic()
    result = engine.migrations.migrate("bench-mig", host=destination.name, policy=POLICY).entity
    elapsed = time.monotonic() - started
    assert result["status"] == "succeeded", result
    return elapsed, result["downtime_ms"]


def wait_up(engine, name: str, text: str = "kestrel-guest: nics", timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in engine.vms.console(name):
        if time.monotonic() > deadline:
            raise SystemExit(f"the guest did not boot within {timeout}s")
        time.sleep(0.5)


def main() -> None:
    state_dir = os.path.abspath(os.environ.get("KESTREL_LAB_STATE_DIR",
                                               kestrel_lab.DEFAULT_STATE_DIR))
    was_up = {h.name for h in kestrel_lab.status(state_dir)} >= {"h1", "h2"}
    hosts = kestrel_lab.up(2, state_dir)[:2]
    kestrel_lab.ensure_guest(state_dir)
    agents = []
    runs = {"engine": [], "raw": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-migration-") as work:
            pki_dir = os.path.join(work, "pki")
            pki.init_ca(pki_dir)
            agents = [start_agent(host, pki_dir) for host in hosts]
            with Engine.open(engine_dir=work, db_url=f"sqlite:///{work}/engine.db") as engine:
                # The lab's libvirtds serve plain qemu+tcp.
                engine.clusters.ensure("bench", virt_type="qemu", migration_encrypted=False)
                for host in hosts:
                    engine.hosts.ensure(host.name, address=host.address, cluster="bench")
                vm = engine.vms.ensure(guest_spec(), state="running").entity
                wait_up(engine, "bench-mig")
                a = next(h for h in hosts if h.name == vm["host"])
                b = next(h for h in hosts if h is not a)
                info = agents[0].client().host_info()
                print(f"lab hosts {a.name} <-> {b.name}: libvirt {info['libvirt_version']}, "
                      f"QEMU {info['qemu_version']}, {info['cpus']} CPUs; guest 128 MiB, idle")
                try:
                    for _ in range(ROUNDS):
                        runs["engine"].append(engine_migrate(engine, b))
                        runs["raw"].append(raw_migrate(b, a, vm["id"]))
                        runs["raw"].append(raw_migrate(a, b, vm["id"]))
                        runs["engine"].append(engine_migrate(engine, a))
                finally:
                    engine.vms.ensure({"name": "bench-mig"}, state="absent")
    finally:
        for agent in agents:
            stop_agent(agent.pid)
        if not was_up:
            kestrel_lab.down(state_dir)

    total = {side: statistics.median(t for t, _ in values) for side, values in runs.items()}
    downtimes = {side: [d for _, d in values if d is not None] for side, values in runs.items()}
    limit = convergence.limit_of(POLICY)
    figures = {
        "migrations_per_side": len(runs["engine"]),
        "engine_total_s": round(total["engine"], 3),
        "raw_total_s": round(total["raw"], 3),
        "total_time_ratio": round(total["engine"] / total["raw"], 3),
        "downtime_ms": max(downtimes["engine"]) if downtimes["engine"] else None,
        "downtime_median_ms": statistics.median(downtimes["engine"])
        if downtimes["engine"] else None,
        "raw_downtime_median_ms": statistics.median(downtimes["raw"])
        if downtimes["raw"] else None,
        "policy": POLICY,
        "policy_limit_ms": limit,
    }
    within = figures["downtime_ms"] is not None and figures["downtime_ms"] <= limit
    print(f"live migration ({figures['migrations_per_side']} per side, median wall time): "
          f"engine {figures['engine_total_s']} s vs virsh migrate --live "
          f"{figures['raw_total_s']} s -> ratio {figures['total_time_ratio']} "
          f"(goal <= {GOAL_RATIO})")
    print(f"downtime through the engine: median {figures['downtime_median_ms']} ms, worst "
          f"{figures['downtime_ms']} ms (policy {POLICY}: at most {limit} ms -> "
          f"{'within' if within else 'OVER'}); raw virsh median "
          f"{figures['raw_downtime_median_ms']} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
