"""Running commands and ending processes on a machine whose PID 1 never reaps.

Dead children of PID 1 stay zombies forever here, so ``kill -0`` says "alive"
for processes long gone: liveness is read from /proc/PID/status instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence

from kestrel_lab.errors import LabError


def run(argv: Sequence[str], host: str = "", **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv``; a non-zero exit raises LabError with the command and its stderr."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        result = subprocess.run(list(argv), check=False, **kwargs)
    except OSError as exc:
        raise LabError(f"cannot run {argv[0]}: {exc}", host) from exc
    if result.returncode != 0:
        output = (result.stderr or result.stdout or "").strip()
        raise LabError(
            f"command failed (exit {result.returncode}): {' '.join(argv)}: {output}", host
        )
    return result


def is_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("State:"):
                    return line.split()[1] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return False


def read_pidfile(path: str) -> int | None:
    """The live PID a daemon wrote to ``path``, or None (missing file, stale PID)."""
    try:
        with open(path, encoding="ascii") as pidfile:
            pid = int(pidfile.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid > 0 and is_alive(pid) else None


def ns_inode(pid: int | str, kind: str) -> int | None:
    """Inode of a namespace (``kind`` is net, mnt, uts, cgroup) of ``pid``.

    ``pid`` may also be a path to a bound namespace file such as /run/netns/h1.
    """
    path = pid if isinstance(pid, str) else f"/proc/{pid}/ns/{kind}"
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_namespaces(net_inode: int | None, mnt_inode: int | None) -> set[int]:
    """Live processes whose network or mount namespace is one of the given ones."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid():
            continue
        in_net = net_inode is not None and ns_inode(pid, "net") == net_inode
        in_mnt = mnt_inode is not None and ns_inode(pid, "mnt") == mnt_inode
        if (in_net or in_mnt) and is_alive(pid):
            found.add(pid)
    return found


def kill_all(find_pids, timeout: float = 30.0, host: str = "") -> None:
    """SIGKILL every process ``find_pids()`` returns until it returns none.

    ``find_pids`` is called again after each round because a dying daemon may
    still fork (libvirtd spawning a helper) between the scan and the signal. A
    killed QEMU counts until it has unmapped its guest's memory, which takes
    seconds on a loaded machine: hence the generous timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = {pid for pid in find_pids() if is_alive(pid)}
        if not pids:
            return
        if time.monotonic() > deadline:
            raise LabError(f"processes survived SIGKILL: {sorted(pids)}", host)
        _signal_all(pids, signal.SIGKILL)
        time.sleep(0.05)


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
