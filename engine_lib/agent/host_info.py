"""What this host offers, for the engine's scheduler and its host view (GET /host).

The scheduler's filters compare a VM against these facts (machine types,
bridges as logical networks, free huge pages, storage domains, installed
hooks), so each is read from where the kernel or libvirt keeps it, never
from configuration that could drift from the host.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import socket
import subprocess
import xml.etree.ElementTree as ET

import libvirt

import engine_lib
from engine_lib.agent import hooks
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.domains import libvirt_errors

log = logging.getLogger("kestrel.agent.host_info")

MiB = 1024 * 1024
SSH_DIR = "/etc/ssh"


def describe(conn: libvirt.virConnect, config: AgentConfig, hook_owner_uid: int) -> dict:
    """The host's facts (GET /host); hooks count only when owned by ``hook_owner_uid``."""
    with libvirt_errors("describe the host"):
        caps = ET.fromstring(conn.getCapabilities())
        _, memory_mib, cpus, *_ = conn.getInfo()
        free_mib = conn.getFreeMemory() // MiB
        libvirt_version = version(conn.getLibVersion())
        qemu_version = version(conn.getVersion())
        running = conn.numOfDomains()
    return {
        "name": config.name,
        "hostname": socket.gethostname(),
        "host_uuid": caps.findtext("host/uuid"),
        "cpu_model": caps.findtext("host/cpu/model"),
        "cpus": cpus,
        "memory_mib": memory_mib,
        "free_memory_mib": free_mib,
        "libvirt_version": libvirt_version,
        "qemu_version": qemu_version,
        "kvm": os.path.exists("/dev/kvm"),
        "running_vms": running,
        # What the scheduler's filters compare a VM against.
        "machines": machines(caps),
        "networks": bridges(),
        "hooks": hooks.installed(config.hooks_dir, owner_uid=hook_owner_uid),
        "hugepages": free_hugepages(),
        "used_memory_mib": memory_mib - free_mib,
        "agent_version": engine_lib.__version__,
        "storage_domains": [storage_domain(name, path) for name, path
                            in sorted(config.storage_domains.items())],
        # The engine records these when the host enrolls and accepts only them when it
        # logs in over SSH: this answer is the one the engine can authenticate.
        "ssh_host_keys": ssh_host_keys(),
    }


def ssh_host_keys(directory: str = SSH_DIR) -> list[str]:
    """sshd's public host keys, "type base64" (comments dropped), sorted."""
    keys = set()
    for path in glob.glob(os.path.join(directory, "ssh_host_*_key.pub")):
        try:
            with open(path, encoding="ascii") as public:
                parts = public.read(16384).split()
        except (OSError, UnicodeDecodeError):
            continue
        if len(parts) >= 2:
            keys.add(f"{parts[0]} {parts[1]}")
    return sorted(keys)


def version(number: int) -> str:
    """libvirt's packed version number (major * 10^6 + minor * 10^3 + micro) as "x.y.z"."""
    major, rest = divmod(number, 1_000_000)
    minor, micro = divmod(rest, 1000)
    return f"{major}.{minor}.{micro}"


def machines(caps: ET.Element) -> list[str] | None:
    """Machine types QEMU emulates here, by name and alias ("pc", "pc-i440fx-7.2", "q35", ...).

    None when libvirt lists none (e.g. its test driver): unknown, not "no machine".
    """
    names: set[str] = set()
    for machine in caps.iterfind("guest/arch[@name='x86_64']/machine"):
        names.add(machine.text or "")
        names.add(machine.get("canonical") or "")
    return sorted(n for n in names if n) or None


def bridges() -> list[str]:
    """Bridges of this host's network namespace: oVirt's logical networks are bridges."""
    try:
        out = subprocess.run(["ip", "-j", "link", "show", "type", "bridge"], check=True,
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot list bridges: %s", exc)
        return []
    return sorted(link["ifname"] for link in json.loads(out or "[]"))


def free_hugepages(root: str = "/sys/kernel/mm/hugepages") -> dict[str, int]:
    """Free huge pages per page size in KiB, e.g. {"2048": 512}."""
    free: dict[str, int] = {}
    try:
        sizes = os.listdir(root)
    except OSError:
        return free
    for entry in sizes:  # hugepages-2048kB
        try:
            with open(os.path.join(root, entry, "free_hugepages")) as handle:
                free[entry.removeprefix("hugepages-").removesuffix("kB")] = int(handle.read())
        except (OSError, ValueError):
            continue
    return free


def storage_domain(name: str, path: str) -> dict:
    """A storage domain's mount as the scheduler sees it: reachable, and how full."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"name": name, "path": path, "available": False, "error": exc.strerror}
    return {"name": name, "path": path, "available": True,
            "total_mib": st.f_blocks * st.f_frsize // MiB,
            "free_mib": st.f_bavail * st.f_frsize // MiB}
