"""The tiny guest's disk image boots from its disk alone under a real libvirtd and
prints its usual ready line; its guest agent answers. (The Debian 12 image is booted
through the engine, with cloud-init, guest agent and SSH, by test_debian_fleet.py.)
Images are built once per recipe and cached in the lab's state directory (build them
before taking the lab lock: ``make images``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

import kestrel_lab
from kestrel_lab import guest_disk

pytestmark = pytest.mark.lab

TINY_BOOT_TIMEOUT = 120


@pytest.fixture(scope="module")
def images(lab_state_dir: str) -> dict[str, str]:
    """The images, built first when their recipe is new (minutes, once per machine)."""
    return {"tiny": guest_disk.tiny_disk_image(lab_state_dir)}


@pytest.fixture
def workdir(lab_state_dir: str) -> Iterator[str]:
    """Overlays and seed ISOs, where the hosts' QEMU (not root) can read them."""
    path = tempfile.mkdtemp(dir=lab_state_dir, prefix="test-guest-images-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def boot(lab: list[kestrel_lab.LabHost], workdir: str) -> Iterator[Callable[..., str]]:
    """boot(name, image, machine, memory_mib, cdrom="") starts a domain on h1 from an
    overlay of ``image`` (the cached image stays untouched); destroyed afterwards."""
    host = lab[0]
    started: list[str] = []

    def start(name: str, image: str, machine: str, memory_mib: int, cdrom: str = "") -> str:
        disk = os.path.join(workdir, f"{name}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image,
                        disk], check=True)
        xml = os.path.join(workdir, f"{name}.xml")
        with open(xml, "w") as out:
            out.write(domain_xml(name, machine, memory_mib, disk, cdrom))
        started.append(name)
        virsh(host, "create", xml)
        return name

    yield start
    for name in started:
        kestrel_lab.run_in(host.name, ["virsh", "-c", "qemu:///system", "destroy", name],
                           host.state_dir, capture_output=True)


def domain_xml(name: str, machine: str, memory_mib: int, disk: str, cdrom: str) -> str:
    """A plain domain that boots from its first disk: no <kernel>, SeaBIOS, TCG."""
    cdrom_xml = (f"""<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <source file='{cdrom}'/><target dev='sda' bus='sata'/><readonly/></disk>"""
                 if cdrom else "")
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/>
    </disk>
    {cdrom_xml}
    <interface type='bridge'><source bridge='kestrelmgmt'/><model type='virtio'/></interface>
    <serial type='pty'>
      <log file='/var/log/libvirt/qemu/{name}-console.log'/><target port='0'/>
    </serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>
"""


def virsh(host: kestrel_lab.LabHost, *args: str, check: bool = True
          ) -> subprocess.CompletedProcess:
    result = kestrel_lab.run_in(host.name, ["virsh", "-q", "-c", "qemu:///system", *args],
                                host.state_dir, capture_output=True, text=True)
    assert not check or result.returncode == 0, (
        f"{host.name}: virsh {' '.join(args)}: {result.stderr}")
    return result


def console(host: kestrel_lab.LabHost, name: str) -> str:
    try:
        with open(os.path.join(host.root, "var/log/libvirt/qemu", f"{name}-console.log"),
                  errors="replace") as log:
            return log.read()
    except FileNotFoundError:
        return ""


def wait_until(what: str, probe: Callable[[], object], timeout: float,
               diagnostics: Callable[[], str]) -> object:
    """Poll ``probe`` until it returns something true; fail with ``diagnostics`` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout}s:\n{diagnostics()[-3000:]}")
        time.sleep(0.5)


def agent_command(host: kestrel_lab.LabHost, name: str, command: str) -> dict | None:
    """The guest agent's answer to ``command``, or None while it does not answer."""
    result = virsh(host, "qemu-agent-command", "--timeout", "5", name,
                   json.dumps({"execute": command}), check=False)
    return json.loads(result.stdout)["return"] if result.returncode == 0 else None


def test_tiny_guest_boots_from_its_disk(lab, images, boot):
    host = lab[0]
    started = time.monotonic()
    name = boot(f"tinydisk-{uuid.uuid4().hex[:8]}", images["tiny"], "pc", 128)
    log = wait_until("the tiny guest's ready line",
                     lambda: guest_disk.READY_LINE in console(host, name) and console(host, name),
                     TINY_BOOT_TIMEOUT, lambda: console(host, name))
    print(f"\ntiny guest from disk: ready line after {time.monotonic() - started:.1f}s")
    assert "SYSLINUX" in log  # the disk's own bootloader ran, no kernel was passed
    assert "kestrel-guest: disks vda" in log
    wait_until("the tiny guest's agent", lambda: agent_command(host, name, "guest-ping") is not None,
               TINY_BOOT_TIMEOUT, lambda: console(host, name))
