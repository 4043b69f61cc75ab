"""make bench-api: the engine API vs the same engine_lib calls made directly, side by side.

This process serves the engine API over TLS (tests/support/api_server.py: uvicorn in a
thread, the engine CA's api certificate) on an engine database holding 10,000 VMs
(copies of one made through vms.ensure, inserted in bulk: tests/support/vm_rows.py), in
a cluster whose host is lab host h1 with a real agent (libvirt, QEMU under TCG, the
lab's tiny guest kernel). SQLite, as the other benches; BENCH_API_DB=postgresql runs
it on a throwaway PostgreSQL instead.
  1. list: every page of 100 of ``GET /vms`` in turn (a client in a process of its own:
     keep-alive HTTPS, JSON parsed) vs ``engine.vms.page(offset=, limit=100)`` for the
     same pages; ms per page, p50/p95 (goal: p95 under 100 ms through the API). Also
     through a token whose user reads one cluster only (access.visible filtering).
  2. start: a VM started through the API as modules start it (RemoteEngine: PUT
     /vms/{name}, 202 and the job polled) vs ``engine.vms.ensure(state="running")``
     directly; two VMs, rounds alternate which goes first, each stopped (untimed)
     after; medians (goal <= 1.2x).
  3. throughput: ``GET /vms?limit=100`` for 10 s from 2 client processes x 2
     connections: requests per second on this machine's 2 cores (the server and its
     clients share them).
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "system"))  # how the system tests run an agent
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the served API, bulk VM rows

import postgres
from agent_fixtures import start_agent, stop_agent
from api_server import served_api
from vm_rows import copy_vm

import kestrel_lab
from engine_lib.api import serve
from engine_lib.client import RemoteEngine

VMS = 10_000
PAGE = 100
START_ROUNDS = 6
LOAD_SECONDS = 10
LOAD_PROCESSES, LOAD_CONNECTIONS = 2, 2
GOALS = {"page_p95_ms": 100, "start_ratio": 1.2}  # <=
CLUSTER = "bench"
SEED = {"name": "seed", "cluster": CLUSTER, "memory": "128MiB", "machine": "pc",
        "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"}],
        "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


def start_spec(name: str) -> dict:
    """A VM booting the lab's tiny guest kernel, no disk."""
    return {"name": name, "cluster": CLUSTER, "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
            "cmdline": "console=ttyS0", "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


class Dirs:
    """tmp_path_factory's mktemp for served_api, under one work directory; the engine's
    gets an engine.conf allowing the lab's shared storage, as an administrator would."""

    def __init__(self, work: str, domain_roots: str):
        self.work, self.domain_roots, self.made = Path(work), domain_roots, 0

    def mktemp(self, name: str) -> Path:
        self.made += 1
        path = self.work / f"{name}{self.made}"
        path.mkdir(mode=0o700)
        if name == "api-engine":
            (path / "engine.conf").write_text(f"[storage]\nfile_domain_roots = "
                                              f"{self.domain_roots}\n")
        return path


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def http_load(api, token: str, *args) -> dict:
    """bench/api/http_load.py in a process of its own; its JSON answer."""
    out = subprocess.run([sys.executable, "-m", "bench.api.http_load", args[0], api.url,
                          api.ca_file, *map(str, args[1:])], cwd=ROOT, check=True,
                         capture_output=True, text=True, env={**os.environ,
                                                              "KESTREL_TOKEN": token})
    return json.loads(out.stdout)


def setup(engine, host, state_dir: str) -> float:
    """The cluster on h1 and the VMs; the seconds the 10,000 rows took to insert."""
    engine.clusters.ensure(CLUSTER, virt_type="qemu")
    engine.hosts.ensure(host.name, address=host.address, cluster=CLUSTER)
    for name in ("data", "images"):
        engine.storage_domains.ensure(name, path=kestrel_lab.shared_dir(state_dir, name),
                                      clusters=[CLUSTER])
    engine.networks.ensure("kestrelmgmt", cluster=CLUSTER)
    engine.vms.ensure(SEED)
    started = time.perf_counter()
    copy_vm(engine, "seed", VMS - 1, prefix="vm-")
    seeded = time.perf_counter() - started
    for name in ("start-api", "start-direct"):
        engine.vms.ensure(start_spec(name))
    return seeded


def bench_pages(api, reader_token: str) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Wall ms of each page per side; and CPU ms per page (direct: this thread's; API:
    this process's, i.e. the server's, the client being another process), the figure
    that holds on a machine others load too."""
    count = -(-api.engine.vms.page(limit=1)["total"] // PAGE)
    direct = []
    cpu = time.thread_time()
    for n in range(count):
        started = time.perf_counter()
        api.engine.vms.page(offset=n * PAGE, limit=PAGE)
        direct.append((time.perf_counter() - started) * 1000)
    cpu_ms = {"direct": (time.thread_time() - cpu) * 1000 / count}
    walls = {"direct": direct}
    for side, token in (("api", api.admin_token), ("api_cluster_reader", reader_token)):
        cpu = time.process_time()
        walls[side] = http_load(api, token, "pages", count, PAGE)["ms"]
        cpu_ms[side] = (time.process_time() - cpu) * 1000 / count
    return walls, cpu_ms


def bench_start(api, remote) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"api": [], "direct": []}
    sides = {"api": lambda: remote.vms.ensure(start_spec("start-api"), state="running"),
             "direct": lambda: api.engine.vms.ensure(start_spec("start-direct"),
                                                     state="running")}
    for round_ in range(START_ROUNDS + 1):  # round 0 warms both up
        order = ["api", "direct"] if round_ % 2 == 0 else ["direct", "api"]
        for side in order:
            started = time.perf_counter()
            entity = sides[side]().entity
            seconds = time.perf_counter() - started
            if entity["status"] != "Up":
                raise RuntimeError(f"start-{side} is {entity['status']}, not Up")
            if round_:
                times[side].append(seconds * 1000)
            api.engine.vms.ensure(start_spec(f"start-{side}"), state="stopped", force=True)
    return times


def bench_load(api) -> dict:
    children = [subprocess.Popen(
        [sys.executable, "-m", "bench.api.http_load", "load", api.url, api.ca_file,
         str(LOAD_SECONDS), str(LOAD_CONNECTIONS), str(PAGE)], cwd=ROOT,
        stdout=subprocess.PIPE, text=True, env={**os.environ, "KESTREL_TOKEN": api.admin_token})
        for _ in range(LOAD_PROCESSES)]
    answers = [json.loads(child.communicate()[0]) for child in children]
    if any(child.returncode for child in children):
        raise RuntimeError("a load process failed; its stderr is above")
    requests = sum(a["requests"] for a in answers)
    ms = [t for a in answers for t in a["ms"]]
    return {"requests": requests, "errors": sum(a["errors"] for a in answers),
            "first_errors": [e for a in answers for e in a["first_errors"]][:3],
            "rps": requests / max(a["seconds"] for a in answers),
            "p50_ms": statistics.median(ms), "p95_ms": percentile(ms, 95)}


@contextlib.contextmanager
def database(work: str):
    if os.environ.get("BENCH_API_DB", "sqlite") != "postgresql":
        yield "sqlite", f"sqlite:///{work}/engine.db"
        return
    with postgres.server(port=55442) as template:  # not the unit tests' port
        yield "postgresql", postgres.create_database(template, "bench_api")


def main() -> None:
    state_dir = os.path.abspath(os.environ.get("KESTREL_LAB_STATE_DIR",
                                               kestrel_lab.DEFAULT_STATE_DIR))
    began = time.monotonic()
    was_up = any(host.name == "h1" for host in kestrel_lab.status(state_dir))
    host = kestrel_lab.up(1, state_dir)[0]
    kestrel_lab.ensure_guest(state_dir)
    domain_roots = os.path.dirname(kestrel_lab.shared_dir(state_dir, "data"))
    agent = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-api-", dir="/var/tmp") as work, \
                database(work) as (db_name, db_url), \
                served_api(Dirs(work, domain_roots), db_url=db_url) as api:
            agent = start_agent(host, os.path.join(api.engine_dir, "pki"))
            info = agent.client().host_info()
            print(f"lab host {host.name}: libvirt {info['libvirt_version']}, QEMU "
                  f"{info['qemu_version']}; database {db_name}; load average "
                  f"{os.getloadavg()[0]:.1f}")
            try:
                seeded = setup(api.engine, host, state_dir)
                # As `kestrel engine serve` once started; one process, so both sides alike.
                serve.settle_gc()
                reader = api.token_for("ReadOnly", "cluster", CLUSTER)
                pages, page_cpu = bench_pages(api, reader)
                with RemoteEngine.connect(api.url, token=api.admin_token,
                                          ca_file=api.ca_file) as remote:
                    starts = bench_start(api, remote)
                load = bench_load(api)
            finally:
                for name in ("start-api", "start-direct"):
                    with contextlib.suppress(Exception):
                        api.engine.vms.ensure({"name": name}, state="absent", force=True)
    finally:
        if agent is not None:
            stop_agent(agent.pid)
        if not was_up:
            kestrel_lab.down(state_dir)
    report(db_name, seeded, pages, page_cpu, starts, load, time.monotonic() - began)


def report(db_name: str, seeded: float, pages: dict, page_cpu: dict, starts: dict, load: dict,
           elapsed: float) -> None:
    def stats(ms: list[float]) -> tuple[float, float]:
        return round(statistics.median(ms), 1), round(percentile(ms, 95), 1)

    f: dict = {"database": db_name, "vms": VMS, "page_size": PAGE,
               "seed_seconds": round(seeded, 2), "pages": len(pages["direct"])}
    for side, ms in pages.items():
        f[f"page_{side}_p50_ms"], f[f"page_{side}_p95_ms"] = stats(ms)
    for side, ms in page_cpu.items():
        f[f"page_{side}_cpu_ms"] = round(ms, 1)
    f["page_p95_goal_ms"] = GOALS["page_p95_ms"]
    f["start_rounds"] = START_ROUNDS
    f["start_api_ms"] = round(statistics.median(starts["api"]), 1)
    f["start_direct_ms"] = round(statistics.median(starts["direct"]), 1)
    f["start_ratio"] = round(f["start_api_ms"] / f["start_direct_ms"], 3)
    f["start_ratio_goal_max"] = GOALS["start_ratio"]
    f["rps"] = round(load["rps"], 1)
    f["rps_connections"] = LOAD_PROCESSES * LOAD_CONNECTIONS
    f["rps_p50_ms"], f["rps_p95_ms"] = round(load["p50_ms"], 1), round(load["p95_ms"], 1)
    f["rps_errors"] = load["errors"]
    f["cpus"] = os.cpu_count()
    f["load_average"] = round(os.getloadavg()[0], 2)
    f["bench_seconds"] = round(elapsed, 1)
    print(f"{VMS} VMs inserted in {f['seed_seconds']} s ({db_name})")
    print(f"GET /vms, {f['pages']} pages of {PAGE} (ms per page, p50 / p95): API "
          f"{f['page_api_p50_ms']} / {f['page_api_p95_ms']} (goal p95 < "
          f"{GOALS['page_p95_ms']}); a one-cluster reader through the API "
          f"{f['page_api_cluster_reader_p50_ms']} / {f['page_api_cluster_reader_p95_ms']}; "
          f"engine.vms.page directly {f['page_direct_p50_ms']} / {f['page_direct_p95_ms']}")
    print(f"  CPU ms per page: API server {f['page_api_cpu_ms']} (one-cluster reader "
          f"{f['page_api_cluster_reader_cpu_ms']}), direct {f['page_direct_cpu_ms']}")
    print(f"VM start ({START_ROUNDS} rounds, median): API (job polled) {f['start_api_ms']} "
          f"ms vs engine.vms.ensure {f['start_direct_ms']} ms -> ratio {f['start_ratio']} "
          f"(goal <= {GOALS['start_ratio']})")
    print(f"GET /vms?limit={PAGE}, {f['rps_connections']} connections for {LOAD_SECONDS} s "
          f"on {f['cpus']} cores: {f['rps']} requests/s (p50 {f['rps_p50_ms']} ms, p95 "
          f"{f['rps_p95_ms']} ms, {load['errors']} errors {load['first_errors']})")
    print(json.dumps(f))


if __name__ == "__main__":
    main()
