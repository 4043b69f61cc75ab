"""The lab behaves like two separate hypervisors: own libvirtd, own name and
address, reachable over SSH with the lab key, able to boot the test guest and
to live-migrate it between them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import libvirt
import pytest
import yaml

import kestrel_lab

pytestmark = pytest.mark.lab

BOOT_TIMEOUT = 30


def virsh(host: kestrel_lab.LabHost, *args: str, logs_of: tuple = (), domain: str = "") -> str:
    """virsh run inside ``host``, talking to whatever qemu:///system is there.

    On failure the message also carries the end of the libvirtd log of each host in
    ``logs_of`` and of ``domain``'s QEMU log there: a flaky failure says why at once."""
    started = time.monotonic()
    result = kestrel_lab.run_in(host.name, ["virsh", "-q", "-c", "qemu:///system", *args],
                                host.state_dir, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{host.name}: virsh {' '.join(args)} (exit {result.returncode} after "
        f"{time.monotonic() - started:.1f}s): {result.stderr}"
        + "".join(_log_tails(other, domain) for other in logs_of))
    return result.stdout


def _log_tails(host: kestrel_lab.LabHost, domain: str, lines: int = 30) -> str:
    paths = ["var/log/libvirt/libvirtd.log"]
    if domain:
        paths.append(f"var/log/libvirt/qemu/{domain}.log")
    text = ""
    for path in paths:
        try:
            with open(os.path.join(host.root, path), errors="replace") as log:
                tail = log.readlines()[-lines:]
        except FileNotFoundError:
            tail = ["(missing)\n"]
        text += f"\n--- {host.name}:/{path} (last {lines} lines)\n" + "".join(tail)
    return text


def guest_xml(name: str, kernel: str, initrd: str, disk: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel><initrd>{initrd}</initrd><cmdline>console=ttyS0</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{disk}'/><target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'><source bridge='kestrelmgmt'/><model type='virtio'/></interface>
    <serial type='pty'>
      <log file='/var/log/libvirt/qemu/{name}-console.log'/><target port='0'/>
    </serial>
  </devices>
</domain>
"""


def wait_for_console(host: kestrel_lab.LabHost, name: str, text: str) -> str:
    """The console log (read from the root namespace) once it shows ``text``."""
    path = os.path.join(host.root, "var/log/libvirt/qemu", f"{name}-console.log")
    deadline = time.monotonic() + BOOT_TIMEOUT
    log = ""
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, errors="replace") as console:
                log = console.read()
            if text in log:
                return log
        time.sleep(0.2)
    pytest.fail(f"{host.name}: no {text!r} on {name}'s console after {BOOT_TIMEOUT}s:\n"
                f"{log[-2000:]}")


def test_each_host_runs_its_own_libvirtd(lab):
    uuids = {}
    for host in lab:
        inside = virsh(host, "capabilities")
        assert f"<uuid>{host.host_uuid}</uuid>" in inside
        # The same daemon answers over TCP on the lab network (live migration's path).
        connection = libvirt.open(host.libvirt_uri)
        try:
            assert connection.getHostname() == host.name
            assert f"<uuid>{host.host_uuid}</uuid>" in connection.getCapabilities()
        finally:
            connection.close()
        uuids[host.name] = host.host_uuid
    assert len(set(uuids.values())) == len(lab) == 3


def test_ssh_with_the_lab_key_reaches_each_host(lab):
    for host in lab:
        result = subprocess.run(
            ["ssh", "-i", host.ssh_key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             f"root@{host.address}", "hostname; getent hosts h1 h2 h3"],
            capture_output=True, text=True, timeout=30, check=True)
        name, *hosts_lines = result.stdout.splitlines()
        assert name == host.name
        assert sorted(line.split() for line in hosts_lines) == [["10.77.0.1", "h1"],
                                                                 ["10.77.0.2", "h2"],
                                                                 ["10.77.0.3", "h3"]]


def test_inventory_lets_ansible_reach_every_host(lab, lab_state_dir):
    path = kestrel_lab.inventory_path(lab_state_dir)
    with open(path) as inventory:
        group = yaml.safe_load(inventory)["all"]["children"]["kestrel_hosts"]
    assert {name: vars["ansible_host"] for name, vars in group["hosts"].items()} == {
        "h1": "10.77.0.1", "h2": "10.77.0.2", "h3": "10.77.0.3"}
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    ansible = ansible if os.path.exists(ansible) else "ansible"
    result = subprocess.run([ansible, "-i", path, "kestrel_hosts", "-m", "command",
                             "-a", "hostname"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "h1 | CHANGED | rc=0 >>\nh1" in result.stdout
    assert "h2 | CHANGED | rc=0 >>\nh2" in result.stdout
    assert "h3 | CHANGED | rc=0 >>\nh3" in result.stdout


def test_guest_boots_in_h1_and_live_migrates_to_h2(lab, lab_guest, lab_state_dir):
    h1, h2 = lab[:2]
    kernel, initrd = lab_guest
    name = f"lab-test-{uuid.uuid4().hex[:8]}"
    disk = os.path.join(kestrel_lab.shared_dir(lab_state_dir, "data"), f"{name}.img")
    with open(disk, "wb") as image:
        image.truncate(16 * 1024 * 1024)
    xml = os.path.join(kestrel_lab.shared_dir(lab_state_dir, "data"), f"{name}.xml")
    with open(xml, "w") as out:
        out.write(guest_xml(name, kernel, initrd, disk))
    try:
        virsh(h1, "create", xml)
        log = wait_for_console(h1, name, "kestrel-guest: up")
        log = wait_for_console(h1, name, "kestrel-guest: nics")
        assert "kestrel-guest: disks vda" in log
        assert "kestrel-guest: nics eth0 lo" in log
        assert name not in virsh(h2, "list", "--name")

        virsh(h1, "migrate", "--live", "--unsafe", name, h2.libvirt_uri,
              logs_of=(h1, h2), domain=name)

        assert name in virsh(h2, "list", "--name")
        assert name not in virsh(h1, "list", "--all", "--name")
    finally:
        for host in lab:
            kestrel_lab.run_in(host.name, ["virsh", "-c", "qemu:///system", "destroy", name],
                               host.state_dir, capture_output=True)
        for path in (disk, xml):
            os.unlink(path)


def test_second_up_keeps_everything_running(lab, lab_state_dir):
    before = {host.name: kestrel_lab.daemons(host) for host in lab}
    started = time.monotonic()
    again = kestrel_lab.up(len(lab), lab_state_dir)
    assert time.monotonic() - started < 2
    assert again == lab
    assert {host.name: kestrel_lab.daemons(host) for host in again} == before
    assert all(pid for daemons in before.values() for pid in daemons.values())
