"""A fleet of stand-in agents and the engine database that knows their VMs.

Each stand-in answers what a real agent answers (engine_lib.agent.vms: ``GET /host``,
``GET /vms``, ``GET /stats``, ``GET /guests``) with random but plausible figures that
move every cycle: a host's CPU and load wander, its VMs' cumulative CPU, disk and NIC
counters grow by their rates. ``advance()`` prepares the next answer as JSON text
before the timed part; ``stats()`` parses it, as the engine's agent client parses the
HTTPS body, so the engine's share of a poll (parse, status sync, statistics) is what
is timed and the agent's is not. HTTPS is left out: it costs the same with or without
statistics, and 500 hosts' TLS handshakes would measure this machine's OpenSSL.

The database is built with the engine's own services where one row each is cheap
(cluster, hosts through ``hosts.ensure``, one VM through ``vms.ensure``) and with bulk
inserts of copies of that VM for the rest (tests/support/vm_rows.py), then set running
on their hosts as a start would leave them.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from sqlalchemy import bindparam, select, update

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from vm_rows import copy_vm

from engine_lib.broker import AgentApi
from engine_lib.model import Host, Vm
from engine_lib.protocol.statuses import VmStatus

CLUSTER = "bench"
HOST_CPUS = 64
HOST_MEMORY_MIB = 512 * 1024
VM_MEMORY_MIB = 8192
SEED = {"name": "seed", "cluster": CLUSTER, "memory": f"{VM_MEMORY_MIB}MiB",
        "cpu": {"sockets": 1, "cores": 4}}
_KIB = 1024
_POLL_S = 15


def host_name(index: int) -> str:
    return f"h{index:04d}"


def host_address(index: int) -> str:
    return f"10.{80 + index // 65536}.{index // 256 % 256}.{index % 256 + 1}"


class _Vm:
    """One guest's moving figures: CPU share, memory use, disk and NIC rates."""

    def __init__(self, vm_id: str, name: str, rng: random.Random):
        self.id, self.name, self.rng = vm_id, name, rng
        self.cpu = rng.uniform(2, 150)  # percent of one host CPU, as top shows it
        self.used_kib = rng.randint(VM_MEMORY_MIB // 4, VM_MEMORY_MIB) * _KIB
        self.rates = [rng.uniform(0, 2e6) for _ in range(4)]  # rx, tx, read, write B/s
        self.cpu_ns = rng.randint(0, 10**14)
        self.counters = [rng.randint(0, 10**12) for _ in range(4)]

    def advance(self) -> None:
        r = self.rng
        self.cpu = min(400.0, max(0.0, self.cpu + r.gauss(0, 10)))
        self.used_kib = min(VM_MEMORY_MIB * _KIB, max(
            VM_MEMORY_MIB * _KIB // 8, self.used_kib + r.randint(-65536, 65536)))
        self.rates = [max(0.0, rate * r.uniform(0.7, 1.3) + r.uniform(-1e4, 1e4))
                      for rate in self.rates]
        self.cpu_ns += int(self.cpu / 100 * _POLL_S * 1e9)
        self.counters = [c + int(rate * _POLL_S) for c, rate in zip(self.counters, self.rates)]

    def listed(self) -> dict:
        """Its entry in GET /vms."""
        return {"id": self.id, "name": self.name, "status": VmStatus.UP.value,
                "state": "running", "reason": 1, "persistent": True, "vcpus": 4,
                "memory_mib": VM_MEMORY_MIB, "cpu_time_ns": self.cpu_ns, "domain_id": 7,
                "devices_hash": devices_hash(self.id)}

    def polled(self) -> dict:
        """Its entry in GET /stats: the listing, libvirt's counters, the agent's rates."""
        rx, tx, read, write = self.counters
        total = VM_MEMORY_MIB * _KIB
        return {**self.listed(),
                "cpu": {"time_ns": self.cpu_ns, "user_ns": self.cpu_ns // 4 * 3,
                        "system_ns": self.cpu_ns // 4, "percent": round(self.cpu, 2)},
                "memory": {"current_kib": total, "maximum_kib": total,
                           "rss_kib": self.used_kib + 200 * _KIB, "available_kib": total,
                           "usable_kib": total - self.used_kib,
                           "unused_kib": total - self.used_kib, "last_update": 1765000000,
                           "target_kib": total},
                "disks": [{"name": "vda", "path": f"/srv/data/{self.id}/root.qcow2",
                           "rd_reqs": read // 4096, "rd_bytes": read, "rd_times": read,
                           "wr_reqs": write // 4096, "wr_bytes": write, "wr_times": write,
                           "fl_reqs": 0, "fl_times": 0, "allocation": 10 << 30,
                           "capacity": 20 << 30, "physical": 10 << 30}],
                "nics": [{"name": "vnet0", "rx_bytes": rx, "rx_pkts": rx // 1400, "rx_errs": 0,
                          "rx_drop": 0, "tx_bytes": tx, "tx_pkts": tx // 1400, "tx_errs": 0,
                          "tx_drop": 0}],
                "rates": {"net_rx_bps": round(self.rates[0], 1),
                          "net_tx_bps": round(self.rates[1], 1),
                          "disk_read_bps": round(self.rates[2], 1),
                          "disk_write_bps": round(self.rates[3], 1)}}


def devices_hash(vm_id: str) -> str:
    """The devices hash the stand-in reports, recorded on the VM row too: matched already."""
    return f"bench-{vm_id}"


class StandInAgent(AgentApi):
    """A host's agent in-process: the host's facts, its VMs, their statistics."""

    def __init__(self, index: int, seed: int):
        self.name = host_name(index)
        self.rng = random.Random(seed * 100_003 + index)
        self.vms: list[_Vm] = []
        self.cpu = self.rng.uniform(5, 80)
        self.busy_ns = self.idle_ns = 0
        self._stats = self._listed = ""

    def add_vm(self, vm_id: str, name: str) -> None:
        self.vms.append(_Vm(vm_id, name, self.rng))

    def advance(self) -> None:
        """The next poll's answers (untimed: the agent's work, not the engine's)."""
        r = self.rng
        for vm in self.vms:
            vm.advance()
        self.cpu = min(100.0, max(0.0, self.cpu + r.gauss(0, 5)))
        total_ns = HOST_CPUS * _POLL_S * 10**9
        self.busy_ns += int(total_ns * self.cpu / 100)
        self.idle_ns += total_ns - int(total_ns * self.cpu / 100)
        vms = [vm.polled() for vm in self.vms]
        used = 4096 + sum(vm.used_kib for vm in self.vms) // _KIB
        sums = {key: round(sum(v["rates"][key] for v in vms), 1)
                for key in ("net_rx_bps", "net_tx_bps", "disk_read_bps", "disk_write_bps")}
        load = round(self.cpu * HOST_CPUS / 100 * r.uniform(0.9, 1.1), 2)
        host = {"cpu": {"user_ns": self.busy_ns // 5 * 4, "kernel_ns": self.busy_ns // 5,
                        "idle_ns": self.idle_ns, "iowait_ns": 0, "percent": round(self.cpu, 2)},
                "memory_mib": HOST_MEMORY_MIB, "free_memory_mib": HOST_MEMORY_MIB - used,
                "used_memory_mib": used, "load": [load, load * 0.95, load * 0.9], **sums,
                "running_vms": len(self.vms), "vm_count": len(self.vms),
                "ballooning": {"enabled": False}}
        self._stats = json.dumps({"host": host, "vms": vms})
        self._listed = json.dumps({"vms": [vm.listed() for vm in self.vms]})

    # -- what the engine asks (parsed as the HTTPS client parses the body) ----------

    def host_info(self, timeout=None) -> dict:
        return {"hostname": self.name, "host_uuid": f"uuid-{self.name}", "cpus": HOST_CPUS,
                "memory_mib": HOST_MEMORY_MIB, "libvirt_version": "9.0.0"}

    def list_vms(self) -> list[dict]:
        return json.loads(self._listed)["vms"]

    def stats(self) -> dict:
        return json.loads(self._stats)

    def guests_info(self) -> dict:
        # Guests without a qemu-guest-agent: nothing to store (as a real agent answers).
        return {"guests": {}, "unavailable": {vm.id: "guest agent not responding"
                                              for vm in self.vms}}


def build(engine, agents: dict[str, StandInAgent], vms_per_host: int) -> None:
    """The cluster, one host per agent, ``vms_per_host`` running VMs on each."""
    engine.clusters.ensure(CLUSTER, virt_type="qemu")
    for address, agent in agents.items():
        engine.hosts.ensure(agent.name, address=address, cluster=CLUSTER)
    engine.vms.ensure(SEED)
    names = copy_vm(engine, "seed", vms_per_host * len(agents) - 1, prefix="vm-")
    with engine.store.transaction() as session:
        hosts = dict(session.execute(select(Host.name, Host.id)).all())
        ids = dict(session.execute(select(Vm.name, Vm.id)).all())
        ordered, rows = ["seed", *names], []
        for number, agent in enumerate(agents.values()):
            for name in ordered[number * vms_per_host:(number + 1) * vms_per_host]:
                agent.add_vm(ids[name], name)
                rows.append({"vid": ids[name], "hid": hosts[agent.name],
                             "dh": devices_hash(ids[name])})
        # What a start leaves: Up on its host, its devices matched (the hash reported).
        table = Vm.__table__
        session.connection().execute(
            update(table).where(table.c.id == bindparam("vid")).values(
                status=VmStatus.UP.value, run_on_host_id=bindparam("hid"),
                devices_hash=bindparam("dh")), rows)
