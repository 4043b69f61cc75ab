"""One monitoring cycle for 500 VMs across the lab hosts, through the real agents.

The engine talks to the real agent on each lab host (h1-h3: mutual TLS over the lab
network, the agent's registry, devices hashes, live XML, guest-agent queries). The
agents are configured with ``libvirt_uri = test:///default``: libvirt's test driver
keeps the 500 domains' definitions and states in the agent's process without running
QEMU (500 TCG guests do not fit this 2-CPU machine), and reports live XML with the
engine's ``ua-`` aliases but none of the controllers and addresses QEMU would add.
Everything else the cycle does — heartbeats, VM lists, status sync, fetching and
matching the live XML of VMs whose devices hash changed, guest info — is real.

Run by bench.py (``make bench-matching``) under the lab lock.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "system"))

from agent_fixtures import start_agent, stop_agent

import kestrel_lab
from engine_lib import pki
from engine_lib.engine import Engine
from engine_lib.loop.monitoring import Monitor
from engine_lib.model import Host
from kestrel_lab import hosts as lab_hosts

HOSTS = 3


def rich_spec(index: int) -> dict:
    """A VM shaped like rich.xml's: three disks, three NICs, graphics, RNG, watchdog, ..."""
    return {"name": f"vm{index:03d}", "cluster": "bench", "memory": "128MiB", "machine": "q35",
            "disks": [{"name": "root", "size": "1MiB", "storage_domain": "data"},
                      {"name": "data", "size": "1MiB", "storage_domain": "data",
                       "interface": "scsi"},
                      {"name": "logs", "size": "1MiB", "storage_domain": "data"}],
            "nics": [{"name": f"nic{i}", "network": "kestrelmgmt"} for i in range(1, 4)],
            "graphics": {"type": "vnc"}, "video": "virtio", "guest_agent": True, "rng": True,
            "watchdog": {"action": "reset"}}


def _room_for(engine: Engine, vms: int) -> None:
    """Record hosts big enough to place the VMs on.

    The test driver reports a 3 GiB host with 3 MiB free (it counts free memory per
    NUMA cell and has no cells), which the scheduler believes. Placement is not what
    is measured: the hosts' memory facts are set to room enough before the VMs start,
    and the first heartbeat of the measured cycle writes back what the agents report.
    """
    with engine.store.transaction() as session:
        for host in session.scalars(select(Host)):
            host.memory_mib, host.used_memory_mib = vms * 256, 0


def timed_ms(func) -> float:
    start = time.perf_counter()
    func()
    return (time.perf_counter() - start) * 1e3


def bench_lab_cycle(vms: int) -> dict:
    state_dir = os.path.abspath(os.environ.get("KESTREL_LAB_STATE_DIR",
                                               kestrel_lab.DEFAULT_STATE_DIR))
    was_up = {host.name for host in kestrel_lab.status(state_dir)}
    hosts = kestrel_lab.up(HOSTS, state_dir)
    data_dir = lab_hosts.shared_dir(state_dir, "data")
    images_before = set(os.listdir(data_dir))
    agents = []
    try:
        with tempfile.TemporaryDirectory(prefix="kestrel-bench-cycle-") as engine_dir:
            pki.init_ca(os.path.join(engine_dir, "pki"))
            agents = [start_agent(host, os.path.join(engine_dir, "pki"), "test:///default")
                      for host in hosts]
            engine = Engine.open(engine_dir=engine_dir,
                                 db_url=f"sqlite:///{engine_dir}/engine.db")
            try:
                engine.clusters.ensure("bench", virt_type="qemu")
                for host in hosts:
                    engine.hosts.ensure(host.name, address=host.address, cluster="bench")
                _room_for(engine, vms)
                started = time.perf_counter()
                for index in range(vms):
                    engine.vms.ensure(rich_spec(index), state="running")
                setup_s = time.perf_counter() - started
                monitor = Monitor(engine)
                first = timed_ms(monitor.cycle)
                steady = statistics.median(timed_ms(monitor.cycle) for _ in range(3))
                per_host = dict(sorted(Counter(vm["host"] for vm in engine.vms.info()).items()))
            finally:
                engine.close()
    finally:
        # The test driver's domains end with the agents; the volumes they had are files.
        for agent in agents:
            stop_agent(agent.pid)
        for image in set(os.listdir(data_dir)) - images_before:
            shutil.rmtree(os.path.join(data_dir, image))
        if not was_up:
            kestrel_lab.down(state_dir)
    print(f"cycle across the lab hosts: {vms} VMs on {per_host} (real agents over mutual "
          f"TLS, libvirt's test driver instead of QEMU; set up in {setup_s:.1f} s)")
    print(f"  first cycle (every live XML fetched, matched, written)  {first:8.1f} ms")
    print(f"  steady cycle (no device changed)                         {steady:8.1f} ms")
    return {"cycle_500_ms": round(steady, 1), "cycle_500_first_ms": round(first, 1),
            "cycle_lab_setup_s": round(setup_s, 1)}
