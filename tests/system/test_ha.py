"""High availability on the lab, with real faults: a killed host, a cut link, a killed
agent, an engine killed in the middle of a restart.

The engine loop runs as ``kestrel engine run`` in a process of its own (so it
can be killed), fencing lab hosts with the lab's fence agent
(scripts/fence_kestrel_lab, the fence-agents interface) and soft-fencing them
over SSH with the lab key. While a scenario runs, a sampler asks every lab
host's libvirtd (``virsh list``) which VMs it runs: two hosts running one VM
at any sample is a duplicate, and no scenario may ever see one.

``KESTREL_HA_REPORT=<file>`` appends each scenario's figures as a JSON line
(``make ha-faults`` reads them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from agent_fixtures import PIDFILE, is_alive, restart_agent

from engine_lib.protocol.errors import VmNotFound
from kestrel_lab import hostfs
from kestrel_lab import hosts as lab_hosts
from kestrel_lab.fence import boot_script
from kestrel_lab.process import run as lab_run

REPO = Path(__file__).resolve().parents[2]
FENCE_AGENT = str(REPO / "scripts" / "fence_kestrel_lab")
KESTREL = str(Path(sys.executable).parent / "kestrel")
VICTIM = "h2"
HA_VMS = {"ha-high": 90, "ha-mid": 50, "ha-low": 10}
PLAIN_VMS = ("plain-1", "plain-2")
NON_RESPONSIVE_AFTER_S = 3.0
POLICY = {"soft_fence_grace_s": 10, "ssh_timeout_s": 3, "power_timeout_s": 30}


def guest(name: str, priority: int | None) -> dict:
    spec = {"name": name, "cluster": "ha", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0"}
    if priority is not None:
        spec["high_availability"] = {"enabled": True, "priority": priority}
    return spec


class Duplicates:
    """Samples every lab host's running domains; remembers the most copies of each VM."""

    def __init__(self, lab, vm_ids: dict[str, str]):
        self.lab, self.vm_ids = lab, vm_ids
        self.most = {name: 0 for name in vm_ids}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def running(self) -> dict[str, list[str]]:
        """VM name -> the lab hosts whose libvirtd runs it now."""
        where = {name: [] for name in self.vm_ids}
        for host in self.lab:
            listed = lab_hosts.run_in(host.name, ["virsh", "-q", "-c", "qemu:///system", "list",
                                                  "--uuid"], host.state_dir,
                                      capture_output=True, text=True, timeout=20)
            if listed.returncode != 0:
                continue  # libvirtd is down (host powered off): it runs nothing
            uuids = set(listed.stdout.split())
            for name, vm_id in self.vm_ids.items():
                if vm_id in uuids:
                    where[name].append(host.name)
        return where

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, hosts in self.running().items():
                self.most[name] = max(self.most[name], len(hosts))
            self.samples += 1
            self._stop.wait(0.3)

    def __enter__(self) -> Duplicates:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def count(self) -> int:
        return sum(max(0, most - 1) for most in self.most.values())


class EngineLoop:
    """``kestrel engine run`` as its own process: killable like a real engine."""

    def __init__(self, engine_dir: Path, db_url: str, ssh_key: str, log: Path):
        self.argv = [KESTREL, "engine", "run", "--engine-dir", str(engine_dir), "--db-url",
                     db_url, "--host-interval", "0.5", "--vm-interval", "1",
                     "--non-responsive-after", str(NON_RESPONSIVE_AFTER_S),
                     "--ssh-key", ssh_key, "--log-file", str(log)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)


def report(scenario: str, **figures) -> None:
    path = os.environ.get("KESTREL_HA_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"scenario": scenario, **figures}) + "\n")


def fence(action: str, host: str, state_dir: str) -> int:
    return subprocess.run([FENCE_AGENT], input=f"action={action}\nplug={host}\n"
                          f"state_dir={state_dir}\n", text=True, capture_output=True,
                          timeout=120).returncode


def agent_pid(host) -> int | None:
    try:
        pid = int(Path(hostfs.source(host.root, PIDFILE)).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if is_alive(pid) else None


@pytest.fixture
def ha(engine, agents, lab, lab_guest, engine_dir, tmp_path):
    """Cluster "ha" on h1..h3 with power management and the lab's soft fence; five VMs
    on h2 (three HA with priorities, two ordinary); the engine loop running.

    Afterwards every host is on, linked and has its agent; the VMs are gone."""
    by_name = {handle.name: handle for handle in agents}
    state_dir = lab[0].state_dir
    for host in lab:  # the agent "unit": started at power on, restarted by a soft fence
        boot = Path(hostfs.source(host.root, lab_hosts.BOOT_SCRIPT))
        boot.write_text(boot_script(sys.executable))
        boot.chmod(0o755)
    engine.clusters.ensure("ha", virt_type="qemu", fencing_policy=POLICY)
    # The lab's fence agent is not in /usr/sbin: list it, as an administrator would.
    engine.config.fence_agents_file.write_text(f"{FENCE_AGENT}\n")

    def register(handle):
        engine.hosts.ensure(handle.name, address=handle.address, cluster="ha",
                            power_management={"agent": Path(FENCE_AGENT).name, "options": {
                                "plug": handle.name, "state_dir": state_dir}},
                            soft_fence_command=f"{lab_hosts.BOOT_SCRIPT} restart")

    register(by_name[VICTIM])  # alone, so every VM starts there
    ids = {}
    for name, priority in [*HA_VMS.items(), *((n, None) for n in PLAIN_VMS)]:
        ids[name] = engine.vms.ensure(guest(name, priority), state="running").entity["id"]
    for name in ("h1", "h3"):
        register(by_name[name])
    loop = EngineLoop(engine_dir, str(engine.config.db_url), lab[0].ssh_key,
                      tmp_path / "engine.log")
    loop.start()
    env = type("Ha", (), {})()
    env.engine, env.loop, env.lab, env.ids, env.state_dir = engine, loop, lab, ids, state_dir
    env.agents, env.log = by_name, tmp_path / "engine.log"
    try:
        yield env
    finally:
        loop.stop()
        _restore(env)


def _restore(env) -> None:
    """Every host on and linked, its agent running (the fixture's handle follows the new
    PID), and none of this test's VMs left anywhere."""
    for host in env.lab:
        lab_run(["ip", "link", "set", f"klab-{host.name}", "up"])
        if not lab_hosts.powered_on(host.name, env.state_dir):
            fence("on", host.name, env.state_dir)
        handle = env.agents[host.name]
        pid = agent_pid(host)
        if pid is None:
            restart_agent(handle)
        else:
            handle.pid = pid
        for vm_id in env.ids.values():
            for command in (["destroy", vm_id], ["undefine", "--nvram", vm_id]):
                lab_hosts.run_in(host.name, ["virsh", "-q", "-c", "qemu:///system", *command],
                                 env.state_dir, capture_output=True, timeout=30)
            with contextlib.suppress(VmNotFound):  # the agent's Down record, too
                handle.client().remove_vm(vm_id)
        Path(hostfs.source(host.root, lab_hosts.BOOT_SCRIPT)).unlink(missing_ok=True)


def statuses(env) -> dict[str, tuple[str, str | None]]:
    return {vm["name"]: (vm["status"], vm["host"]) for vm in env.engine.vms.info(cluster="ha")}


def host_status(env, name: str) -> str:
    return env.engine.hosts.info(name=name)[0]["status"]


def ha_all_up_elsewhere(env):
    now = statuses(env)
    return all(now[name][0] == "Up" and now[name][1] not in (VICTIM, None) for name in HA_VMS)


def restarts(env) -> list[str]:
    return [e["entity_name"] for e in env.engine.events.info(entity_type="vm", limit=1000)
            if e["message"].startswith("restarting highly available VM")]


def wait_all_up_on_victim(env):
    wait_until(lambda: host_status(env, VICTIM) == "Up" and all(
        status == ("Up", VICTIM) for status in statuses(env).values()), 60,
        f"all VMs Up on {VICTIM}")


def test_a_killed_host_s_ha_vms_come_up_elsewhere_and_ordinary_ones_stay_down(ha):
    wait_all_up_on_victim(ha)
    with Duplicates(ha.lab, ha.ids) as dups:
        killed = time.monotonic()
        assert fence("off", VICTIM, ha.state_dir) == 0  # pull the plug
        wait_until(lambda: ha_all_up_elsewhere(ha), 120, "HA VMs Up on other hosts")
        restart_s = time.monotonic() - killed
        now = statuses(ha)
        assert {now[name] for name in PLAIN_VMS} == {("Down", None)}
        # Highest priority first.
        assert restarts(ha) == sorted(HA_VMS, key=lambda n: -HA_VMS[n])
        # The engine powers the fenced host back on; it rejoins with nothing running.
        wait_until(lambda: host_status(ha, VICTIM) == "Up", 60, f"{VICTIM} Up again")
        where = dups.running()
    assert dups.count == 0 and dups.samples > 3
    assert all(len(where[name]) == 1 and VICTIM not in where[name] for name in HA_VMS)
    assert all(where[name] == [] for name in PLAIN_VMS)
    assert statuses(ha)[PLAIN_VMS[0]] == ("Down", None)
    report("kill_host", ha_restart_s=round(restart_s, 2), duplicates=dups.count)


def test_a_cut_link_restarts_nothing_until_the_host_is_fenced_then_exactly_one_copy(ha):
    wait_all_up_on_victim(ha)
    ha.engine.clusters.ensure("ha", fencing_policy={"enabled": False})
    with Duplicates(ha.lab, ha.ids) as dups:
        lab_run(["ip", "link", "set", f"klab-{VICTIM}", "down"])
        cut = time.monotonic()
        # Nothing refuses the heartbeat: it times out (bounded by the monitor's
        # heartbeat wait, half the NonResponsive timeout here), then the host is silent.
        wait_until(lambda: host_status(ha, VICTIM) == "NonResponsive", 30, "NonResponsive")
        time.sleep(3)  # no proof, so nothing may move
        assert {status for status, _ in statuses(ha).values()} == {"Unknown"}
        assert restarts(ha) == []
        where = dups.running()
        assert all(where[name] == [VICTIM] for name in ha.ids)  # the guests still run there
        ha.engine.clusters.ensure("ha", fencing_policy={"enabled": True})
        wait_until(lambda: ha_all_up_elsewhere(ha), 90, "HA VMs Up on other hosts")
        restart_s = time.monotonic() - cut
        where = dups.running()
    assert dups.count == 0
    assert all(len(where[name]) == 1 and VICTIM not in where[name] for name in HA_VMS)
    assert all(where[name] == [] for name in PLAIN_VMS)  # fenced with their host
    lab_run(["ip", "link", "set", f"klab-{VICTIM}", "up"])
    wait_until(lambda: host_status(ha, VICTIM) == "Up", 60, f"{VICTIM} Up after the link")
    report("cut_link", ha_restart_s=round(restart_s, 2), duplicates=dups.count)


def test_a_killed_agent_restarts_nothing_and_recovers(ha):
    wait_all_up_on_victim(ha)
    victim = next(host for host in ha.lab if host.name == VICTIM)
    with Duplicates(ha.lab, ha.ids) as dups:
        os.kill(agent_pid(victim), signal.SIGKILL)
        wait_until(lambda: host_status(ha, VICTIM) == "NonResponsive", 30, "NonResponsive")
        # The soft fence restarts the agent over SSH; the VMs never stopped.
        wait_all_up_on_victim(ha)
        where = dups.running()
    assert dups.count == 0
    assert all(where[name] == [VICTIM] for name in ha.ids)
    assert restarts(ha) == []
    notes = [e["message"] for e in ha.engine.events.info(entity_name=VICTIM, limit=1000)]
    assert any(m.startswith("soft fence") and "sent" in m for m in notes)
    assert not any(m.startswith("power fencing") for m in notes)
    report("kill_agent", duplicates=dups.count)


def test_an_engine_killed_mid_restart_finishes_on_return_without_duplicates(ha):
    wait_all_up_on_victim(ha)
    with Duplicates(ha.lab, ha.ids) as dups:
        killed = time.monotonic()
        assert fence("off", VICTIM, ha.state_dir) == 0
        wait_until(lambda: restarts(ha), 60, "the first HA restart begins", interval=0.02)
        ha.loop.kill()  # SIGKILL in the middle of the restarts
        interrupted = statuses(ha)
        ha.loop.start()
        wait_until(lambda: ha_all_up_elsewhere(ha), 120, "HA VMs Up after the engine returned")
        restart_s = time.monotonic() - killed
        wait_until(lambda: host_status(ha, VICTIM) == "Up", 60, f"{VICTIM} Up again")
        where = dups.running()
    assert dups.count == 0
    assert all(len(where[name]) == 1 for name in HA_VMS), (interrupted, where)
    assert {statuses(ha)[name] for name in PLAIN_VMS} == {("Down", None)}
    report("kill_engine", ha_restart_s=round(restart_s, 2), duplicates=dups.count,
           interrupted={name: interrupted[name][0] for name in HA_VMS})
