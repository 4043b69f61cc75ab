"""Host agents running inside the lab hosts, and an engine PKI to talk to them.

``agents`` (session): for every lab host, a certificate from a temporary
engine CA (pki.issue), a private /etc/kestrel/agent.conf inside the host,
and ``python -m engine_lib.agent --daemon`` started inside the host's
namespaces. Yields AgentHandle objects once every agent answers; stops them
(by PID, reap-aware) at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine_lib import pki
from engine_lib.broker import AgentClient
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import AgentUnreachable
from kestrel_lab import hosts as lab_hosts

AGENT_PORT = 54321
CONFIG_PATH = "/etc/kestrel/agent.conf"
PIDFILE = "/run/kestrel/agent.pid"
LOG_FILE = "/var/log/kestrel/agent.log"
START_TIMEOUT = 20.0


@dataclass
class AgentHandle:
    host: object  # the lab's LabHost
    pki_dir: str  # the engine's PKI directory (ca.pem, engine.pem, engine.key)
    pid: int

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def address(self) -> str:
        return self.host.address

    def client(self, timeout: float = 30) -> AgentClient:
        return AgentClient(self.address, AGENT_PORT, self.pki_dir, timeout=timeout)

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a command inside this agent's host."""
        return run_in_host(self.host, argv, **kwargs)


def run_in_host(host, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("check", True)
    return lab_hosts.run_in(host.name, argv, host.state_dir, **kwargs)


def agent_config_text(host, libvirt_uri: str = "qemu:///system") -> str:
    return f"""[agent]
address = {host.address}
port = {AGENT_PORT}
libvirt_uri = {libvirt_uri}
name = {host.name}

[pki]
ca = /etc/kestrel/pki/ca.pem
cert = /etc/kestrel/pki/agent.pem
key = /etc/kestrel/pki/agent.key

[paths]
channels = /var/lib/kestrel/channels
payload = /var/lib/kestrel/payload
console = /var/log/kestrel/console
nvram = /var/lib/kestrel/nvram

[storage]
file_domain_roots = {os.path.dirname(lab_hosts.shared_dir(host.state_dir, "data"))}

[storage_domains]
data = {lab_hosts.shared_dir(host.state_dir, "data")}
images = {lab_hosts.shared_dir(host.state_dir, "images")}

[statistics]
# Lab hosts share this machine's CPUs: each one's load is its own cgroup's.
cpu_accounting = cgroup
"""


def _install(host, files: dict[str, tuple[bytes, int]]) -> None:
    """Write files into the host's private mounts (/etc/kestrel is per host)."""
    for path, (data, mode) in files.items():
        run_in_host(host, ["mkdir", "-p", os.path.dirname(path)])
        run_in_host(host, ["sh", "-c", 'cat > "$1" && chmod "$2" "$1"', "install", path,
                           oct(mode)[2:]], input=data)


def start_agent(host, pki_dir: str, libvirt_uri: str = "qemu:///system") -> AgentHandle:
    key, cert = pki.issue(pki_dir, host.name, [host.address])
    ca = Path(pki_dir, "ca.pem").read_bytes()
    _install(host, {
        "/etc/kestrel/pki/ca.pem": (ca, 0o644),
        # As host deploy does; it also replaces a CRL of an earlier session's CA.
        "/etc/kestrel/pki/crl.pem": (pki.crl(pki_dir), 0o644),
        "/etc/kestrel/pki/agent.pem": (cert, 0o644),
        "/etc/kestrel/pki/agent.key": (key, 0o600),
        CONFIG_PATH: (agent_config_text(host, libvirt_uri).encode(), 0o644),
    })
    run_in_host(host, [sys.executable, "-m", "engine_lib.agent", "--config", CONFIG_PATH,
                       "--daemon", "--pidfile", PIDFILE, "--log-file", LOG_FILE])
    pid = int(run_in_host(host, ["cat", PIDFILE], text=True).stdout)
    handle = AgentHandle(host=host, pki_dir=pki_dir, pid=pid)
    wait_until_answers(handle.client(timeout=2))
    return handle


def restart_agent(handle: AgentHandle) -> AgentHandle:
    """Start the agent again in its host (after it was killed); the handle follows the new PID."""
    run_in_host(handle.host, [sys.executable, "-m", "engine_lib.agent", "--config", CONFIG_PATH,
                              "--daemon", "--pidfile", PIDFILE, "--log-file", LOG_FILE])
    handle.pid = int(run_in_host(handle.host, ["cat", PIDFILE], text=True).stdout)
    wait_until_answers(handle.client(timeout=2))
    return handle


def wait_until_answers(client: AgentClient, timeout: float = START_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.host_info()
        except AgentUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def is_alive(pid: int) -> bool:
    """Reap-aware: PID 1 does not reap here, so a zombie counts as gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except FileNotFoundError:
        return False
    return False


def stop_agent(pid: int, timeout: float = 10.0) -> None:
    if not is_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if is_alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def engine_pki_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("engine") / "pki"
    pki.init_ca(str(path))
    return str(path)


@pytest.fixture(scope="session")
def agents(lab, engine_pki_dir):
    handles = []
    try:
        for host in lab:
            handles.append(start_agent(host, engine_pki_dir))
        yield handles
    finally:
        for handle in handles:
            stop_agent(handle.pid)


# -- a tiny-guest domain as the engine would render it ----------------------------------


def guest_domain_xml(vm_id: str | None = None, name: str | None = None,
                     disk_mib: int = 64, bridge: str | None = None) -> tuple[str, dict]:
    """Domain XML with host placeholders only: a qcow2 volume on "data", the tiny
    guest's kernel and initrd on "images", a serial console logged to a placeholder.

    Returns (xml, volume) where volume is the VolumeRef as the engine sends it.
    """
    vm_id = vm_id or str(uuid.uuid4())
    name = name or f"agent-test-{vm_id[:8]}"
    disk_alias = f"ua-{uuid.uuid4()}"
    volume = {"alias": disk_alias, "domain": "data", "image": str(uuid.uuid4()),
              "volume": str(uuid.uuid4()), "format": "qcow2", "size_mib": disk_mib}
    disk = placeholders.storage("data", f"{volume['image']}/{volume['volume']}")
    nic = (f"""
    <interface type='bridge'>
      <source bridge='{bridge}'/>
      <model type='virtio'/>
      <alias name='ua-{uuid.uuid4()}'/>
    </interface>""" if bridge else "")
    serial_alias = f"ua-{uuid.uuid4()}"
    xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{vm_id}</uuid>
  <metadata>
    <kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>
      <kestrel:cluster>test</kestrel:cluster>
      <kestrel:volume alias='{disk_alias}' domain='data' image='{volume["image"]}'
                      volume='{volume["volume"]}' format='qcow2' size_mib='{disk_mib}'
                      create='yes'/>
    </kestrel:vm>
  </metadata>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{placeholders.storage('images', 'vmlinuz')}</kernel>
    <initrd>{placeholders.storage('images', 'initrd.img')}</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      <alias name='{disk_alias}'/>
    </disk>{nic}
    <serial type='pty'>
      <log file='{placeholders.console_log(vm_id)}' append='on'/>
      <target port='0'/>
      <alias name='{serial_alias}'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
      <alias name='{serial_alias}'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>"""
    return xml, volume
