"""make bench-agent: the host agent's overhead over bare libvirt, measured side by side.

On lab host h1 (brought up if the lab is down, taken down again then), with a
real agent started there exactly as the system tests start it:
  - start: a VM started through the agent (HTTPS + mutual TLS from the engine's
    side, placeholder resolution, hooks lookup, validation, define, create)
    versus bare ``defineXML`` + ``create`` of the same resolved XML on a
    long-lived libvirt connection inside the same host; rounds alternate, the
    median of each side is compared;
  - stats: one ``GET /stats`` of 30 running VMs (each with a qcow2 disk and a
    NIC) through the agent versus one bare ``getAllDomainStats`` with the same
    groups; bare polls with every group and with state + CPU only are printed
    for scale.
The VMs boot firmware only (no kernel, no disk to boot): they sit idle in
SeaBIOS, so 30 of them do not load the 2 CPUs the figures are taken on.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "system"))  # how the system tests run an agent

import libvirt
from agent_fixtures import CONFIG_PATH, start_agent, stop_agent

import kestrel_lab
from engine_lib import pki
from engine_lib.agent import stats
from engine_lib.protocol import metadata, placeholders

START_ROUNDS = 12
STATS_VMS = 30
STATS_POLLS = 15
BRIDGE = "kestrelmgmt"
GOALS = {"start_overhead_ratio": 1.15, "stats_poll_ratio": 1.5}


def domain_xml(with_devices: bool) -> tuple[str, str, dict | None]:
    """A 128 MiB firmware-only VM as the engine would send it; (id, xml, volume)."""
    vm_id = str(uuid.uuid4())
    volume = None
    devices = ""
    meta = ""
    if with_devices:
        volume = {"domain": "data", "image": str(uuid.uuid4()), "volume": str(uuid.uuid4()),
                  "format": "qcow2", "size_mib": 16, "alias": f"ua-{uuid.uuid4()}"}
        meta = (f"<kestrel:volume alias='{volume['alias']}' domain='data' "
                f"image='{volume['image']}' volume='{volume['volume']}' format='qcow2' "
                f"size_mib='16'/>")
        source = placeholders.storage("data", f"{volume['image']}/{volume['volume']}")
        devices = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                   f"<source file='{source}'/><target dev='vda' bus='virtio'/>"
                   f"<alias name='{volume['alias']}'/></disk>"
                   f"<interface type='bridge'><source bridge='{BRIDGE}'/>"
                   f"<model type='virtio'/><alias name='ua-{uuid.uuid4()}'/></interface>")
    xml = f"""<domain type='qemu'>
  <name>bench-{vm_id[:8]}</name>
  <uuid>{vm_id}</uuid>
  <metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>
    <kestrel:cluster>bench</kestrel:cluster>{meta}</kestrel:vm></metadata>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>{devices}
    <serial type='pty'><log file='{placeholders.console_log(vm_id)}' append='on'/>
      <target port='0'/></serial>
    <memballoon model='virtio'/>
  </devices>
</domain>"""
    return vm_id, xml, volume


class RawLibvirt:
    """bench/agent/raw_libvirt.py inside the lab host, one JSON line per request."""

    def __init__(self, host_name: str, state_dir: str):
        script = str(ROOT / "bench" / "agent" / "raw_libvirt.py")
        argv = kestrel_lab.exec_argv(host_name, [sys.executable, script, CONFIG_PATH], state_dir)
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)

    def call(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the bare-libvirt helper in the lab host exited "
                               f"(status {self.process.wait()}); its stderr is above")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # it exited already
        self.process.wait(timeout=30)


def timed(func) -> float:
    begin = time.perf_counter()
    func()
    return time.perf_counter() - begin


def bench_start(client, raw: RawLibvirt) -> tuple[list[float], list[float]]:
    agent_times, raw_times = [], []
    for round_ in range(START_ROUNDS + 1):  # round 0 warms both up (TLS, caches, dirs)
        vm_id, xml, _volume = domain_xml(with_devices=False)
        seconds = timed(partial(client.start_vm, xml))
        client.destroy_vm(vm_id)
        client.remove_vm(vm_id)
        vm_id, xml, _volume = domain_xml(with_devices=False)
        answer = raw.call(op="start", xml=xml)
        raw.call(op="remove", id=answer["id"])
        if round_:
            agent_times.append(seconds)
            raw_times.append(answer["seconds"])
    return agent_times, raw_times


def bench_stats(client, raw: RawLibvirt) -> dict[str, list[float]]:
    started, volumes = [], []
    try:
        for _vm in range(STATS_VMS):
            vm_id, xml, volume = domain_xml(with_devices=True)
            volumes.append(volume)
            client.start_vm(xml)
            started.append(vm_id)
        time.sleep(3)  # let the last firmware settle
        reported = client.stats()
        assert len(reported["vms"]) == STATS_VMS, len(reported["vms"])
        times: dict[str, list[float]] = {"agent": [], "raw": [], "raw_all": [], "raw_cpu": []}
        for _poll in range(STATS_POLLS):
            times["agent"].append(timed(client.stats))
            times["raw"].append(raw.call(op="stats", groups=stats.GROUPS)["seconds"])
            times["raw_all"].append(raw.call(op="stats", groups=0)["seconds"])
            times["raw_cpu"].append(raw.call(
                op="stats", groups=libvirt.VIR_DOMAIN_STATS_STATE
                | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL)["seconds"])
        return times
    finally:
        for vm_id in started:
            client.destroy_vm(vm_id)
            client.remove_vm(vm_id)
        client.delete_volumes(volumes)


def main() -> None:
    state_dir = os.path.abspath(os.environ.get("KESTREL_LAB_STATE_DIR",
                                               kestrel_lab.DEFAULT_STATE_DIR))
    was_up = any(host.name == "h1" for host in kestrel_lab.status(state_dir))
    host = kestrel_lab.up(1, state_dir)[0]
    agent = raw = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-agent-") as work:
            pki_dir = os.path.join(work, "pki")
            pki.init_ca(pki_dir)
            agent = start_agent(host, pki_dir)
            client = agent.client(timeout=120)
            raw = RawLibvirt(host.name, state_dir)
            info = client.host_info()
            print(f"lab host {host.name}: libvirt {info['libvirt_version']}, "
                  f"QEMU {info['qemu_version']}, {info['cpus']} CPUs")
            agent_start, raw_start = bench_start(client, raw)
            poll = bench_stats(client, raw)
    finally:
        if raw is not None:
            raw.close()
        if agent is not None:
            stop_agent(agent.pid)
        if not was_up:
            kestrel_lab.down(state_dir)

    med = {name: statistics.median(values) for name, values in
           {"agent_start": agent_start, "raw_start": raw_start, **{
               f"{k}_stats": v for k, v in poll.items()}}.items()}
    figures = {
        "start_agent_ms": round(med["agent_start"] * 1000, 1),
        "start_raw_ms": round(med["raw_start"] * 1000, 1),
        "start_overhead_ratio": round(med["agent_start"] / med["raw_start"], 3),
        "stats_vms": STATS_VMS,
        "stats_agent_ms": round(med["agent_stats"] * 1000, 1),
        "stats_raw_ms": round(med["raw_stats"] * 1000, 1),
        "stats_raw_all_groups_ms": round(med["raw_all_stats"] * 1000, 1),
        "stats_raw_state_cpu_ms": round(med["raw_cpu_stats"] * 1000, 1),
        "stats_poll_ratio": round(med["agent_stats"] / med["raw_stats"], 3),
    }
    print(f"start a VM ({START_ROUNDS} rounds, median): agent {figures['start_agent_ms']} ms"
          f" vs defineXML+create {figures['start_raw_ms']} ms -> ratio "
          f"{figures['start_overhead_ratio']} (goal <= {GOALS['start_overhead_ratio']})")
    print(f"stats poll of {STATS_VMS} VMs ({STATS_POLLS} polls, median): agent "
          f"{figures['stats_agent_ms']} ms vs getAllDomainStats(same groups) "
          f"{figures['stats_raw_ms']} ms -> ratio {figures['stats_poll_ratio']} "
          f"(goal <= {GOALS['stats_poll_ratio']})")
    print(f"  for scale, bare getAllDomainStats: every group {figures['stats_raw_all_groups_ms']}"
          f" ms, state+CPU {figures['stats_raw_state_cpu_ms']} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
