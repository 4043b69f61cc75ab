"""virt-sysprep for real: a small Debian-like ext4 disk sealed through agent.seal.

The appliance boots under TCG here (the lab's /dev/kvm cannot run a 64-bit
Linux guest) from the fixed appliance kestrel_lab.guestfs builds once; one
seal takes about 30-40 s. No lab host is needed.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from engine_lib.agent import seal
from engine_lib.agent.config import SealConfig
from engine_lib.agent.volumes import VolumeLocation
from kestrel_lab import guestfs

MACHINE_ID = "0123456789abcdef0123456789abcdef\n"


@pytest.fixture(scope="module")
def appliance(lab_state_dir: str) -> str:
    return guestfs.build(os.path.join(lab_state_dir, "cache", "guestfs-appliance"))


def _tree(root) -> None:
    files = {
        "etc/machine-id": MACHINE_ID,
        "etc/hostname": "golden\n",
        "etc/fstab": "LABEL=root / ext4 defaults 0 1\n",
        "etc/os-release": 'ID=debian\nVERSION_ID="12"\nNAME="Debian GNU/Linux"\n',
        "etc/debian_version": "12.0\n",
        "etc/ssh/ssh_host_ed25519_key": "private\n",
        "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA golden\n",
        "etc/ssh/ssh_host_rsa_key": "private\n",
        "etc/ssh/sshd_config": "PermitRootLogin no\n",
        "var/log/syslog": "golden booted\n",
        "root/.bash_history": "cat /etc/shadow\n",
    }
    os.makedirs(root / "usr" / "bin")
    os.symlink("usr/bin", root / "bin")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _cat(image: str, path: str) -> str | None:
    result = subprocess.run(["debugfs", "-R", f"cat {path}", image], capture_output=True,
                            text=True, check=True)
    return None if "not found" in result.stderr else result.stdout


def _ls(image: str, path: str) -> list[str]:
    result = subprocess.run(["debugfs", "-R", f"ls -p {path}", image], capture_output=True,
                            text=True, check=True)
    return sorted(line.split("/")[5] for line in result.stdout.splitlines()
                  if line.count("/") >= 6 and line.split("/")[5] not in (".", ".."))


def test_seal_empties_machine_id_removes_host_keys_and_sets_hostname(tmp_path, appliance):
    _tree(tmp_path / "root")
    raw = str(tmp_path / "disk.raw")
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(tmp_path / "root"), raw, "32M"],
                   check=True)
    domain = tmp_path / "domain"
    (domain / "img").mkdir(parents=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw,
                    str(domain / "img" / "vol")], check=True)
    config = SealConfig(appliance=appliance, tcg=True, timeout_s=600,
                        cache_dir=str(tmp_path / "cache"))

    result = seal.seal(VolumeLocation("data", "img", "vol"), {"data": str(domain)}, "qcow2",
                       config, hostname="tmpl-1")

    assert "machine-id" in result["operations"] and "customize" in result["operations"]
    sealed = str(tmp_path / "sealed.raw")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                    str(domain / "img" / "vol"), sealed], check=True)
    assert _cat(sealed, "/etc/machine-id") == ""  # emptied: systemd makes a new one at boot
    assert _ls(sealed, "/etc/ssh") == ["sshd_config"]
    assert _cat(sealed, "/root/.bash_history") is None
    assert _cat(sealed, "/var/log/syslog") is None
    assert _cat(sealed, "/etc/hostname") == "tmpl-1\n"
