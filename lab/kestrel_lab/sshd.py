"""SSH into lab hosts, the way Ansible reaches real hypervisors.

One client key per lab (``<state_dir>/ssh/id_ed25519``), authorized for root
on every host; each host has its own host key and an sshd bound only to its
lab address. The machine's /root/.ssh is never touched.
"""

from __future__ import annotations

import glob
import os

from kestrel_lab.hostfs import source
from kestrel_lab.process import run

SSHD = "/usr/sbin/sshd"


def client_key(state_dir: str) -> str:
    """The lab's private key path, generated once and kept across down/up."""
    directory = os.path.join(state_dir, "ssh")
    key = os.path.join(directory, "id_ed25519")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not os.path.exists(key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kestrel-lab", "-f", key])
    authorized = authorized_keys(state_dir)
    with open(key + ".pub", encoding="ascii") as public, open(authorized, "w") as out:
        out.write(public.read())
    os.chmod(authorized, 0o600)
    return key


def authorized_keys(state_dir: str) -> str:
    return os.path.join(state_dir, "ssh", "authorized_keys")


def pidfile(root: str) -> str:
    return os.path.join(root, "run", "sshd.pid")


def configure(root: str, name: str, address: str, state_dir: str) -> None:
    """Give the host's private /etc/ssh a host key of its own and our sshd_config."""
    etc = source(root, "/etc/ssh")
    for old_key in glob.glob(os.path.join(etc, "ssh_host_*")):
        os.unlink(old_key)
    host_key = os.path.join(etc, "ssh_host_ed25519_key")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", host_key],
        host=name)
    with open(os.path.join(etc, "sshd_config"), "w", encoding="ascii") as config:
        config.write(f"""\
# kestrel lab host {name}: reachable on the lab network only, by the lab key only.
ListenAddress {address}:22
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile {pidfile(root)}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {authorized_keys(state_dir)}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
""")
    # sshd's privilege separation directory lives in the shared /run.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


def argv(root: str) -> list[str]:
    """Start sshd (it daemonizes); its log goes next to the host's other logs."""
    return [SSHD, "-E", os.path.join(root, "var", "log", "sshd.log")]
