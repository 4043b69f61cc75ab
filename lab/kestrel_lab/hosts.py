"""Lab hosts: hypervisors made of Linux namespaces on one machine.

Host ``hN`` is a network + mount + UTS + cgroup namespace held open by one
long-lived anchor process, with its own libvirtd, virtlogd and sshd, private
/etc/libvirt, /var/lib/libvirt, /etc/kestrel... (see hostfs), and address
10.77.0.N on a bridge shared with the root namespace (see network). To the
engine, the agent and Ansible each one is a separate machine; real live
migration works between them. Shared storage is ``<state_dir>/shared``.

State lives in ``<state_dir>``: ``hosts/hN/host.json`` records what ``up``
created (so ``down`` removes exactly that), ``inventory.yml`` is an Ansible
inventory of the running hosts, ``ssh/id_ed25519`` is the lab's SSH key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from kestrel_lab import cgroups, guest, hostfs, network, sshd
from kestrel_lab.errors import LabError
from kestrel_lab.process import (
    is_alive,
    kill_all,
    ns_inode,
    pids_in_namespaces,
    read_pidfile,
    run,
    wait_for,
)

DEFAULT_STATE_DIR = "/srv/kestrel-lab"
SHARED_DOMAINS = ("data", "images")
STARTUP_TIMEOUT = 15.0

# Move this shell into the cgroups named before "--", then exec the rest.
# Constant code; paths and the command arrive as arguments, never as code.
_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; '
_JOIN_AND_EXEC = _JOIN + 'exec "$@"'
# The same, but start the command detached in the background and print its PID.
_JOIN_AND_SPAWN = _JOIN + '"$@" </dev/null >/dev/null 2>&1 & echo $!'


@dataclass(frozen=True)
class LabHost:
    """A running lab host, as seen from the root namespace."""

    name: str  # "h1", also its hostname
    address: str  # "10.77.0.1"
    pid: int  # the anchor process holding the namespaces: nsenter -t pid
    host_uuid: str  # what its libvirtd reports
    state_dir: str

    @property
    def root(self) -> str:
        """Where the host's private files live in the root namespace."""
        return _host_root(self.state_dir, self.name)

    @property
    def libvirt_uri(self) -> str:
        """Reach this host's libvirtd from the root namespace or another host."""
        return f"qemu+tcp://{self.address}/system"

    @property
    def ssh_key(self) -> str:
        return os.path.join(self.state_dir, "ssh", "id_ed25519")


# QEMU runs unprivileged and needs userfaultfd for post-copy migration; Debian's
# default (0) makes it answer "Postcopy is not supported". Machine-wide, like the bridge.
_USERFAULTFD_SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd"


def _allow_postcopy() -> None:
    with contextlib.suppress(OSError):  # read-only /proc/sys: post-copy tests say why they fail
        with open(_USERFAULTFD_SYSCTL, "w", encoding="ascii") as sysctl:
            sysctl.write("1\n")


def up(count: int = 2, state_dir: str = DEFAULT_STATE_DIR) -> list[LabHost]:
    """Bring hosts h1..h<count> up and return them; hosts already up are kept.

    Also ensures the shared storage domains, the lab SSH key, the Ansible
    inventory and the test guest in ``shared/images`` (built once, cached).
    """
    if count < 1:
        raise LabError(f"need at least one host, asked for {count}")
    state_dir = os.path.abspath(state_dir)
    names = [f"h{index}" for index in range(1, count + 1)]
    with _locked(state_dir):
        for domain in SHARED_DOMAINS:
            os.makedirs(shared_dir(state_dir, domain), exist_ok=True)
        sshd.client_key(state_dir)
        network.ensure_bridge()
        _allow_postcopy()
        created, restarted = [], []
        for index, name in enumerate(names, start=1):
            record = _load(state_dir, name)
            if record and _anchor_alive(record):
                # Kept, VMs and all; a daemon that died is simply started again.
                if _dead_daemons(state_dir, name):
                    restarted.append(name)
                continue
            _teardown(state_dir, name)
            _create(state_dir, name, index)
            created.append(name)
        _write_hosts_files(state_dir)
        for name in created:
            _seed_capabilities(state_dir, name)
        for name in created + restarted:
            _start_daemons(state_dir, name, _dead_daemons(state_dir, name))
        for name in created + restarted:
            _wait_ready(state_dir, name)
        _warm_up(state_dir, created + restarted)
        _write_inventory(state_dir)
    ensure_guest(state_dir)
    running = {host.name: host for host in status(state_dir)}
    missing = [name for name in names if name not in running]
    if missing:
        raise LabError(f"hosts {missing} did not stay up; see {state_dir}/hosts/*/var/log")
    return [running[name] for name in names]


def down(state_dir: str = DEFAULT_STATE_DIR) -> None:
    """Stop every lab host: all their processes (VMs too), namespaces, links, mounts.

    Keeps what is costly and harmless: the SSH key, shared storage, the guest,
    cached QEMU capabilities.
    Safe to call when nothing is up.
    """
    state_dir = os.path.abspath(state_dir)
    if not os.path.isdir(state_dir):
        return  # never up with this state dir: nothing of ours to remove
    with _locked(state_dir):
        for name in _recorded_names(state_dir):
            _teardown(state_dir, name)
        network.remove_bridge()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(inventory_path(state_dir))


def status(state_dir: str = DEFAULT_STATE_DIR) -> list[LabHost]:
    """The lab hosts whose anchor process is alive in their network namespace."""
    state_dir = os.path.abspath(state_dir)
    hosts = []
    for name in _recorded_names(state_dir):
        record = _load(state_dir, name)
        if record and _anchor_alive(record):
            hosts.append(_lab_host(state_dir, record))
    return hosts


def daemons(host: LabHost) -> dict[str, int | None]:
    """PID of each daemon of ``host`` (None when not running)."""
    return {name: read_pidfile(path) for name, path in _pidfiles(host.root).items()}


def exec_argv(host_name: str, argv: Sequence[str], state_dir: str = DEFAULT_STATE_DIR) -> list[str]:
    """The command line that runs ``argv`` inside lab host ``host_name``.

    The command joins the host's cgroups and enters its namespaces, so what it
    starts (an agent, a daemon) belongs to the host and ``down`` stops it.
    """
    record = _load(os.path.abspath(state_dir), host_name)
    if not record or not _anchor_alive(record):
        raise LabError(f"lab host is not up (state dir {state_dir})", host_name)
    return _exec_argv(record, argv)


def run_in(host_name: str, argv: Sequence[str], state_dir: str = DEFAULT_STATE_DIR,
           **subprocess_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` of ``argv`` inside lab host ``host_name``."""
    return subprocess.run(exec_argv(host_name, argv, state_dir), **subprocess_kwargs)


def ensure_guest(state_dir: str = DEFAULT_STATE_DIR) -> tuple[str, str]:
    """The test guest's (kernel, initrd) in the "images" storage domain, built if missing."""
    return guest.build(shared_dir(os.path.abspath(state_dir), "images"))


def shared_dir(state_dir: str, domain: str) -> str:
    """Path of a shared storage domain ("data", "images"), the same on every host."""
    return os.path.join(state_dir, "shared", domain)


def inventory_path(state_dir: str = DEFAULT_STATE_DIR) -> str:
    return os.path.join(os.path.abspath(state_dir), "inventory.yml")


# -- power (the lab's fence device) ------------------------------------------------------------

# Run after power on when the host has it, the way systemd starts an enabled service
# on boot: whoever installs the agent in a lab host may install this too.
BOOT_SCRIPT = "/etc/kestrel/lab-boot"
# What a reboot empties: the host's private /run directories (tmpfs on a real machine).
_VOLATILE_DIRS = ("/run/libvirt", "/run/kestrel")


def powered_on(host_name: str, state_dir: str = DEFAULT_STATE_DIR) -> bool:
    """True while any process of the host runs besides the anchor holding its namespaces.

    A name the lab never had is an error, not "off": a fence device must never
    vouch for a machine it does not know.
    """
    record = _load(os.path.abspath(state_dir), host_name)
    if not record:
        raise LabError(f"no such lab host (state dir {state_dir})", host_name)
    if not _anchor_alive(record):
        return False
    return any(is_alive(pid) for pid in _host_pids(record) - {record["pid"]})


def power_off(host_name: str, state_dir: str = DEFAULT_STATE_DIR) -> None:
    """Pull the plug: SIGKILL every process of the host (VMs, libvirtd, agent, sshd).

    The anchor and the namespaces stay, like the machine's disks and NICs, so
    ``power_on`` can boot it again with its files; /run starts empty again.
    """
    state_dir = os.path.abspath(state_dir)
    record = _load(state_dir, host_name)
    if not record or not _anchor_alive(record):
        raise LabError(f"lab host is not up (state dir {state_dir})", host_name)
    kill_all(lambda: _host_pids(record) - {record["pid"]}, host=host_name)
    for path in _VOLATILE_DIRS:
        directory = hostfs.source(_host_root(state_dir, host_name), path)
        for entry in os.listdir(directory) if os.path.isdir(directory) else []:
            target = os.path.join(directory, entry)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)


def power_on(host_name: str, state_dir: str = DEFAULT_STATE_DIR) -> None:
    """Boot a powered-off host: its daemons, then its boot script (the agent) if any."""
    state_dir = os.path.abspath(state_dir)
    record = _load(state_dir, host_name)
    if not record or not _anchor_alive(record):
        raise LabError(f"lab host is not up (state dir {state_dir})", host_name)
    with _locked(state_dir):
        _start_daemons(state_dir, host_name, _dead_daemons(state_dir, host_name))
        _wait_ready(state_dir, host_name)
    boot = hostfs.source(_host_root(state_dir, host_name), BOOT_SCRIPT)
    if os.access(boot, os.X_OK):
        run(_exec_argv(record, [BOOT_SCRIPT, "start"]), host=host_name,
            stdin=subprocess.DEVNULL)


def _host_pids(record: dict) -> set[int]:
    netns = ns_inode(network.netns_path(record["name"]), "net")
    anchor_mnt = ns_inode(record["pid"], "mnt")
    return cgroups.pids(record["cgroups"]) | pids_in_namespaces(netns, anchor_mnt)


# -- creating a host --------------------------------------------------------------------------

def _create(state_dir: str, name: str, index: int) -> None:
    root = _host_root(state_dir, name)
    address = network.address(index)
    if os.path.exists(network.netns_path(name)):
        raise LabError(f"network namespace {name} exists but is not part of the lab in "
                       f"{state_dir}; bring that lab down or `ip netns del {name}`", name)
    hostfs.remove(root)
    os.makedirs(root)
    # Recorded before anything is created, so a failure halfway is undone by down().
    record = {"name": name, "index": index, "address": address,
              "host_uuid": hostfs.host_uuid(name), "pid": None, "cgroups": []}
    _save(state_dir, record)
    hostfs.prepare(root, name, address)
    sshd.configure(root, name, address, state_dir)
    network.create_host(name, index)
    record["cgroups"] = cgroups.create(f"kestrel-lab-{name}")
    _save(state_dir, record)
    record["pid"] = _spawn_anchor(record)
    _save(state_dir, record)
    for argv in _inside_setup(record, root):
        run(_exec_argv(record, argv), host=name)


def _spawn_anchor(record: dict) -> int:
    """Start the process that holds the host's namespaces for its whole life."""
    name = record["name"]
    argv = ["sh", "-c", _JOIN_AND_SPAWN, f"kestrel-lab-{name}",
            *cgroups.procs_files(record["cgroups"]), "--",
            "nsenter", f"--net={network.netns_path(name)}",
            "unshare", "--mount", "--uts", "--cgroup", "--propagation", "private",
            "--", "sleep", "infinity"]
    pid = int(run(argv, host=name, start_new_session=True).stdout.strip())
    own = {kind: ns_inode(os.getpid(), kind) for kind in ("mnt", "uts", "cgroup")}
    netns = ns_inode(network.netns_path(name), "net")

    def entered() -> bool:
        return ns_inode(pid, "net") == netns and all(
            ns_inode(pid, kind) not in (None, inode) for kind, inode in own.items())

    if not wait_for(entered, timeout=5) or not is_alive(pid):
        raise LabError(f"anchor process {pid} did not enter its namespaces", name)
    return pid


def _inside_setup(record: dict, root: str) -> list[list[str]]:
    """Commands run inside the new namespaces before any daemon starts."""
    argvs = []
    if _is_mountpoint(record["pid"], "/run/netns"):
        # Drop our copies of other hosts' namespace mounts, or they would keep
        # those namespaces alive after the other host is brought down.
        argvs.append(["umount", "--recursive", "--lazy", "/run/netns"])
    # sysfs shows the network devices of the namespace that mounted it.
    argvs.append(["mount", "-t", "sysfs", "sysfs", "/sys"])
    argvs += cgroups.mount_argvs()
    argvs += hostfs.bind_argvs(root)
    argvs.append(["hostname", record["name"]])
    return argvs


def _is_mountpoint(pid: int, path: str) -> bool:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as mountinfo:
        return any(line.split()[4] == path for line in mountinfo)


def _daemon_argvs(root: str) -> dict[str, list[str]]:
    """How each daemon of a host starts (each daemonizes and writes its pid file)."""
    return {"virtlogd": ["virtlogd", "-d", "-p", hostfs.VIRTLOGD_PIDFILE],
            "libvirtd": ["libvirtd", "-d", "-l", "-p", hostfs.LIBVIRTD_PIDFILE],
            "sshd": sshd.argv(root)}


def _start_daemons(state_dir: str, name: str, which: list[str]) -> None:
    record = _load(state_dir, name)
    argvs = _daemon_argvs(_host_root(state_dir, name))
    for daemon in which:
        # stderr to a file, not a pipe: a daemon keeping the pipe open would hang us.
        with tempfile.TemporaryFile() as errors:
            result = subprocess.run(_exec_argv(record, argvs[daemon]), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=errors, check=False)
            if result.returncode != 0:
                errors.seek(0)
                raise LabError(f"{daemon} failed to start (exit {result.returncode}): "
                               f"{errors.read().decode(errors='replace').strip()}", name)


def _wait_ready(state_dir: str, name: str) -> None:
    root = _host_root(state_dir, name)
    socket = hostfs.source(root, hostfs.LIBVIRT_SOCKET)

    def ready() -> bool:
        return not _dead_daemons(state_dir, name) and os.path.exists(socket)

    if not wait_for(ready, STARTUP_TIMEOUT):
        raise LabError(f"daemons not running after {STARTUP_TIMEOUT:.0f}s: "
                       f"{_dead_daemons(state_dir, name) or ['libvirtd (no socket)']}"
                       f" (logs under {root}/var/log)", name)


def _capabilities_cache(root: str) -> str:
    return hostfs.source(root, "/var/cache/libvirt/qemu/capabilities")


def _seed_capabilities(state_dir: str, name: str) -> None:
    """Give a new host the QEMU capabilities an earlier host probed.

    Probing takes libvirtd about 8 s per host here; libvirt re-validates a
    cached file (QEMU binary, libvirt version, kernel...) and re-probes when it
    is stale, so seeding only ever saves time.
    """
    cached = os.path.join(state_dir, "cache", "qemu-capabilities")
    if os.path.isdir(cached):
        shutil.copytree(cached, _capabilities_cache(_host_root(state_dir, name)),
                        dirs_exist_ok=True)


def _warm_up(state_dir: str, names: list[str]) -> None:
    """Have each new libvirtd answer a capabilities query (which probes QEMU if
    needed, in parallel), then keep the probe results for future hosts."""
    probes = [(name, subprocess.Popen(
        _exec_argv(_load(state_dir, name), ["virsh", "-q", "-c", "qemu:///system", "capabilities"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)) for name in names]
    for name, probe in probes:
        _, errors = probe.communicate(timeout=120)
        if probe.returncode != 0:
            raise LabError(f"libvirtd does not answer: {errors.strip()}", name)
    cached = os.path.join(state_dir, "cache", "qemu-capabilities")
    if names and not os.path.isdir(cached):
        shutil.rmtree(cached + ".new", ignore_errors=True)
        shutil.copytree(_capabilities_cache(_host_root(state_dir, names[0])), cached + ".new")
        os.replace(cached + ".new", cached)


# -- tearing down -----------------------------------------------------------------------------

def _teardown(state_dir: str, name: str) -> None:
    """Remove whatever ``up`` recorded for host ``name``; a no-op when nothing was."""
    root = _host_root(state_dir, name)
    record = _load(state_dir, name)
    if record is None:
        hostfs.remove(root)
        return
    netns = ns_inode(network.netns_path(name), "net")
    # The anchor's mount namespace counts only while the anchor is provably ours.
    anchor_mnt = ns_inode(record["pid"], "mnt") if _anchor_alive(record) else None
    kill_all(lambda: cgroups.pids(record["cgroups"]) | pids_in_namespaces(netns, anchor_mnt),
             host=name)
    cgroups.remove(record["cgroups"])
    network.remove_host(name)
    hostfs.remove(root)


# -- records and checks -----------------------------------------------------------------------

def _host_root(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "hosts", name)


def _record_path(state_dir: str, name: str) -> str:
    return os.path.join(_host_root(state_dir, name), "host.json")


def _load(state_dir: str, name: str) -> dict | None:
    try:
        with open(_record_path(state_dir, name), encoding="utf-8") as record:
            return json.load(record)
    except (FileNotFoundError, ValueError):
        return None


def _save(state_dir: str, record: dict) -> None:
    path = _record_path(state_dir, record["name"])
    with open(path + ".new", "w", encoding="utf-8") as out:
        json.dump(record, out, indent=2)
    os.replace(path + ".new", path)


def _recorded_names(state_dir: str) -> list[str]:
    hosts = os.path.join(state_dir, "hosts")
    names = os.listdir(hosts) if os.path.isdir(hosts) else []
    return sorted((n for n in names if n[:1] == "h" and n[1:].isdigit()), key=lambda n: int(n[1:]))


def _lab_host(state_dir: str, record: dict) -> LabHost:
    return LabHost(record["name"], record["address"], record["pid"], record["host_uuid"],
                   state_dir)


def _anchor_alive(record: dict) -> bool:
    """The anchor lives and still sits in the host's namespace (not a reused PID)."""
    pid = record.get("pid")
    netns = ns_inode(network.netns_path(record["name"]), "net")
    return bool(pid) and netns is not None and is_alive(pid) and ns_inode(pid, "net") == netns


def _dead_daemons(state_dir: str, name: str) -> list[str]:
    """Daemons of the host not running (a PID reused outside the host counts as dead)."""
    netns = ns_inode(network.netns_path(name), "net")
    dead = []
    for daemon, path in _pidfiles(_host_root(state_dir, name)).items():
        pid = read_pidfile(path)
        if pid is None or ns_inode(pid, "net") != netns:
            dead.append(daemon)
    return dead


def _pidfiles(root: str) -> dict[str, str]:
    return {"virtlogd": hostfs.source(root, hostfs.VIRTLOGD_PIDFILE),
            "libvirtd": hostfs.source(root, hostfs.LIBVIRTD_PIDFILE),
            "sshd": sshd.pidfile(root)}


def _exec_argv(record: dict, argv: Sequence[str]) -> list[str]:
    return ["sh", "-c", _JOIN_AND_EXEC, f"kestrel-lab-{record['name']}",
            *cgroups.procs_files(record["cgroups"]), "--",
            "nsenter", "-t", str(record["pid"]), "-n", "-m", "-u", "-C", "--", *argv]


@contextlib.contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    """One ``up``/``down`` at a time per lab (concurrent test sessions, CLI calls)."""
    os.makedirs(state_dir, exist_ok=True)
    with open(os.path.join(state_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# -- files shared by all hosts ----------------------------------------------------------------

def _write_hosts_files(state_dir: str) -> None:
    records = [record for name in _recorded_names(state_dir) if (record := _load(state_dir, name))]
    entries = [(record["name"], record["address"]) for record in records]
    for record in records:
        hostfs.write_hosts_file(_host_root(state_dir, record["name"]), entries, network.GATEWAY)


def _write_inventory(state_dir: str) -> None:
    """An Ansible YAML inventory: group kestrel_hosts with every running host."""
    key = os.path.join(state_dir, "ssh", "id_ed25519")
    lines = [
        "# Written by the kestrel lab (kestrel_lab.hosts.up): its running hosts.",
        "all:",
        "  children:",
        "    kestrel_hosts:",
        "      hosts:",
    ]
    for host in status(state_dir):
        lines += [f"        {host.name}:", f"          ansible_host: {host.address}"]
    lines += [
        "      vars:",
        "        ansible_user: root",
        f"        ansible_ssh_private_key_file: {json.dumps(key)}",
        "        ansible_ssh_common_args: "
        "'-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
        "        ansible_python_interpreter: /usr/bin/python3",
        # One SSH round trip per task instead of four (no temporary module file to put,
        # chmod and remove): measured a sixth off the host role's runs on the lab.
        "        ansible_pipelining: true",
        # The lab's sshd reads this file, not root's (the machine's /root is shared).
        f"        kestrel_host_authorized_keys_file: "
        f"{json.dumps(sshd.authorized_keys(state_dir))}",
        # libvirtd runs with the lab's pidfile (the machine's /run is shared).
        f"        kestrel_host_libvirtd_pidfile: {hostfs.LIBVIRTD_PIDFILE}",
        # Lab hosts share this machine's CPUs: each one's load is its own cgroup's.
        "        kestrel_host_cpu_accounting: cgroup",
    ]
    path = inventory_path(state_dir)
    with open(path + ".new", "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(path + ".new", path)
