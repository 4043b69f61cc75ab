"""The lab for system tests: two hypervisor hosts in network namespaces.

The ``lab`` fixture brings h1, h2 and h3 up (with the tiny guest in the "images"
storage domain) and yields their LabHost records. Several pytest sessions may
share one lab (parallel runs, a developer's ``kestrel-lab up``), so each
session registers itself and the last one out takes the lab down, and only
when a test session brought it up: a lab that was already running before is
left running. ``KESTREL_LAB_STATE_DIR`` picks another state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

import pytest

import kestrel_lab
from kestrel_lab.process import is_alive

LAB_HOSTS = 3
STARTED_BY_TESTS = "started-by-tests"


@pytest.fixture(scope="session")
def lab_state_dir() -> str:
    return os.path.abspath(os.environ.get("KESTREL_LAB_STATE_DIR", kestrel_lab.DEFAULT_STATE_DIR))


@pytest.fixture(scope="session")
def lab(lab_state_dir: str) -> Iterator[list[kestrel_lab.LabHost]]:
    """h1, h2 and h3, up for the whole session, with the guest in shared/images."""
    wanted = {f"h{index}" for index in range(1, LAB_HOSTS + 1)}
    with _sessions(lab_state_dir) as sessions:
        if not wanted <= {host.name for host in kestrel_lab.status(lab_state_dir)}:
            open(os.path.join(sessions, STARTED_BY_TESTS), "w").close()
        open(os.path.join(sessions, str(os.getpid())), "w").close()
        try:
            hosts = kestrel_lab.up(LAB_HOSTS, lab_state_dir)
        except BaseException:
            _leave(sessions, lab_state_dir)
            raise
    yield hosts
    with _sessions(lab_state_dir) as sessions:
        _leave(sessions, lab_state_dir)


def _leave(sessions: str, state_dir: str) -> None:
    """Unregister this session; the last one out takes down a lab tests started."""
    os.unlink(os.path.join(sessions, str(os.getpid())))
    if os.listdir(sessions) != [STARTED_BY_TESTS]:
        return
    kestrel_lab.down(state_dir)
    os.unlink(os.path.join(sessions, STARTED_BY_TESTS))


@pytest.fixture(scope="session")
def lab_guest(lab: list[kestrel_lab.LabHost], lab_state_dir: str) -> tuple[str, str]:
    """(kernel, initrd) of the tiny test guest, readable by every lab host."""
    return kestrel_lab.ensure_guest(lab_state_dir)


@contextlib.contextmanager
def _sessions(state_dir: str) -> Iterator[str]:
    """The directory of test sessions using the lab, locked while we look at it."""
    directory = os.path.join(state_dir, "test-sessions")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(state_dir, ".test-sessions.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in os.listdir(directory):  # sessions that died without leaving
            if name.isdigit() and not is_alive(int(name)):
                os.unlink(os.path.join(directory, name))
        yield directory
