"""Seal a template volume: virt-sysprep removes what makes a disk one machine's.

A template's disk is copied into every VM made from it, so whatever identifies
the machine it came from (machine-id, SSH host keys, logs, shell history, DHCP
leases, MAC-bound network config) must go first. oVirt seals with
virt-sysprep's defaults minus a few; we run a fixed, conservative set
(OPERATIONS), plus ``customize`` only to set a hostname: no operation that
touches user accounts, no host file copied in, no network.

The volume is reached through engine_lib.agent.paths (no link followed) and
handed over as /proc/self/fd/N of the checked file; libguestfs resolves that to
the file's path when it adds the drive and QEMU opens that path (the same
window as libvirt's, see paths.confine). The format is pinned, and a qcow2
whose header names a backing or an external data file is refused: the
appliance would open that host file and sysprep's writes would copy its bytes
into the template. QEMU's image lock refuses a volume a running VM holds.

virt-sysprep runs with a clean environment (no root's variables, no debug or
backend settings but ours), in its own process group, so the hard timeout (or
an abort) kills the appliance's QEMU with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time

from engine_lib.agent import image_check, paths
from engine_lib.agent.config import SealConfig
from engine_lib.agent.volumes import FORMATS, VolumeLocation
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError

VIRT_SYSPREP = "virt-sysprep"
OPERATIONS = ("bash-history", "dhcp-client-state", "logfiles", "machine-id", "net-hwaddr",
              "ssh-hostkeys", "tmp-files", "udev-persistent-net")
MAX_OUTPUT = 4000  # characters of virt-sysprep's output kept for an error message
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# RFC 1123 labels, dot-separated; what virt-customize writes into /etc/hostname.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class SealFailed(KestrelError):
    code = "SealFailed"
    http_status = 502


def command(disk: str, fmt: str, hostname: str = "") -> list[str]:
    """virt-sysprep's argv for the disk path ``disk``: format pinned, no network."""
    check_format(fmt)
    hostname = check_hostname(hostname)
    operations = [*OPERATIONS, "customize"] if hostname else list(OPERATIONS)
    argv = [VIRT_SYSPREP, "--format", fmt, "-a", disk, "--no-network",
            "--operations", ",".join(operations)]
    if hostname:
        # customize runs after machine-id and writes a fresh machine id first thing;
        # truncating it again (customize commands run in order) keeps the seal.
        argv += ["--hostname", hostname, "--truncate", "/etc/machine-id"]
    return argv


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidSpec("volume.format", f"'{fmt}' is not one of {FORMATS}")


def check_hostname(hostname: str) -> str:
    if not isinstance(hostname, str):
        raise InvalidSpec("hostname", "a string is required")
    if hostname and not _HOSTNAME.match(hostname):
        raise InvalidSpec("hostname", f"{hostname!r} is not a host name (letters, digits "
                                      "and '-' in dot-separated labels)")
    return hostname


def environment(config: SealConfig) -> dict[str, str]:
    """The whole environment virt-sysprep gets: nothing inherited from the agent."""
    env = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": config.cache_dir,
           "TMPDIR": config.cache_dir, "LIBGUESTFS_CACHEDIR": config.cache_dir,
           # direct: QEMU started by libguestfs itself, not a domain in this host's libvirt.
           "LIBGUESTFS_BACKEND": "direct"}
    if config.tcg:
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    if config.appliance:
        env["LIBGUESTFS_PATH"] = config.appliance
    elif config.kernel:
        env |= {"SUPERMIN_KERNEL": config.kernel, "SUPERMIN_MODULES": config.modules,
                "SUPERMIN_KERNEL_VERSION": os.path.basename(config.modules.rstrip("/"))}
    return env


def check_image(fd: int, fmt: str, shown: str) -> None:
    """Refuse a qcow2 naming a backing or an external data file (read without opening them)."""
    if fmt != "qcow2":
        return
    result = subprocess.run(["qemu-img", "info", "--output=json", "-U",
                             image_check.pinned(fmt, fd)], pass_fds=(fd,),
                            capture_output=True, text=True, check=False, env={"PATH": _PATH})
    if result.returncode != 0:
        raise InvalidSpec("volume", f"{shown} is not a readable qcow2 image: "
                                    f"{_tail(result.stderr)}")
    info = json.loads(result.stdout)
    if info.get("backing-filename"):
        raise InvalidSpec("volume", f"{shown} has a backing file ({info['backing-filename']}); "
                                    "only a volume without one (a flattened copy) is sealed")
    data_file = info.get("format-specific", {}).get("data", {}).get("data-file")
    if data_file:
        raise InvalidSpec("volume", f"{shown} has an external data file ({data_file}); "
                                    "refused")


def seal(location: VolumeLocation, storage_domains: dict[str, str], fmt: str,
         config: SealConfig, *, hostname: str = "", in_use: set[str] = frozenset(),
         abort: threading.Event | None = None) -> dict:
    """Run virt-sysprep on one volume; the result (operations, seconds, output tail).

    ``in_use``: disk paths of VMs defined on this host (Conflict if the volume is one).
    ``abort``: set it from another thread to stop the run (the process group is killed).
    """
    check_format(fmt)
    check_hostname(hostname)
    shown = location.path(storage_domains)
    checked = location.checked_path(storage_domains)
    if os.path.realpath(checked) in {os.path.realpath(p) for p in in_use}:
        raise Conflict(f"volume {shown} is a disk of a VM defined on this host; a template "
                       "volume is sealed before any VM uses it", path=shown)
    try:
        fd = location.open(storage_domains, os.O_RDWR)
    except FileNotFoundError:
        raise InvalidSpec("volume", f"{shown} does not exist") from None
    try:
        check_image(fd, fmt, shown)
        os.makedirs(config.cache_dir, mode=0o700, exist_ok=True)
        argv = command(paths.fd_path(fd), fmt, hostname)
        started = time.monotonic()
        code, output = _run(argv, environment(config), fd, config.timeout_s, abort, shown)
    finally:
        os.close(fd)
    seconds = round(time.monotonic() - started, 1)
    if code != 0:
        raise SealFailed(f"virt-sysprep failed on {shown} (exit {code}): {_tail(output)}",
                         path=shown, exit_code=code)
    return {"path": shown, "operations": argv[argv.index("--operations") + 1].split(","),
            "hostname": hostname, "seconds": seconds, "output": _tail(output)}


def _run(argv: list[str], env: dict[str, str], fd: int, timeout: float,
         abort: threading.Event | None, shown: str) -> tuple[int, str]:
    try:
        proc = subprocess.Popen(argv, env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True, cwd="/")
    except FileNotFoundError:
        raise SealFailed(f"{argv[0]} is not installed on this host (Debian package "
                         "guestfs-tools; the host role installs it with "
                         "kestrel_host_seal: true)") from None
    deadline = time.monotonic() + timeout
    while True:
        try:  # communicate keeps what it read when it times out: nothing is lost
            out, _ = proc.communicate(timeout=0.5)
            return proc.returncode, out or ""
        except subprocess.TimeoutExpired:
            pass
        if abort is not None and abort.is_set():
            _kill(proc)
            raise KestrelError(f"sealing {shown} was aborted", path=shown)
        if time.monotonic() > deadline:
            _kill(proc)
            raise SealFailed(f"virt-sysprep on {shown} did not finish within {timeout:g} s "
                             "(agent.conf [seal] timeout); it was killed", path=shown)


def _kill(proc: subprocess.Popen) -> None:
    """Kill virt-sysprep and the appliance's QEMU (same process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_OUTPUT else "…" + text[-MAX_OUTPUT:]
