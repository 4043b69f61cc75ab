"""``python -m engine_lib.agent --daemon``: detach, pidfile, refusal, clean stop.

The agent talks to libvirt's in-process test driver here; what matters is
the process life cycle. Agents on real libvirtd are in tests/system.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from engine_lib import pki
from engine_lib.broker import AgentClient


def _alive(pid: int) -> bool:
    """Reap-aware (PID 1 does not reap here): a zombie is dead."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(line for line in status if line.startswith("State:")).split()[1] != "Z"
    except FileNotFoundError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def setup(tmp_path):
    engine = tmp_path / "engine"
    pki.init_ca(str(engine))
    key, cert = pki.issue(str(engine), "h1", ["127.0.0.1"])
    (tmp_path / "agent.key").write_bytes(key)
    (tmp_path / "agent.pem").write_bytes(cert)
    port = _free_port()
    config = tmp_path / "agent.conf"
    config.write_text(f"""[agent]
address = 127.0.0.1
port = {port}
libvirt_uri = test:///default
name = h1
[pki]
ca = {engine}/ca.pem
cert = {tmp_path}/agent.pem
key = {tmp_path}/agent.key
""")
    return {"config": str(config), "pidfile": str(tmp_path / "run" / "agent.pid"),
            "log": str(tmp_path / "agent.log"), "port": port, "engine": str(engine)}


def _start(setup, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine_lib.agent", "--config", setup["config"],
                           "--daemon", "--pidfile", setup["pidfile"], "--log-file", setup["log"],
                           *extra], capture_output=True, text=True, timeout=30)


def test_daemon_serves_refuses_a_twin_and_stops_cleanly(setup):
    first = _start(setup)
    assert first.returncode == 0, first.stderr
    pid = int(open(setup["pidfile"]).read())
    try:
        assert _alive(pid)
        client = AgentClient("127.0.0.1", setup["port"], setup["engine"])
        assert client.host_info()["name"] == "h1"  # serving when the launcher returned

        twin = _start(setup)
        assert twin.returncode == 1
        assert f"an agent is already running (pid {pid}, pidfile {setup['pidfile']})" \
            in twin.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not os.path.exists(setup["pidfile"])
    log = open(setup["log"]).read()
    assert "listening on 127.0.0.1" in log and "agent stopped" in log


def test_stale_pidfile_is_taken_over(setup):
    os.makedirs(os.path.dirname(setup["pidfile"]))
    with open(setup["pidfile"], "w") as handle:
        handle.write("999999\n")  # a crashed agent's
    started = _start(setup)
    assert started.returncode == 0, started.stderr
    pid = int(open(setup["pidfile"]).read())
    assert pid != 999999 and _alive(pid)
    os.kill(pid, signal.SIGTERM)


def test_startup_errors_reach_the_caller(setup, tmp_path):
    (tmp_path / "agent.key").write_text("not a key")
    failed = _start(setup)
    assert failed.returncode == 1
    assert "[pki] cert/key: cannot load" in failed.stderr
    assert not os.path.exists(setup["pidfile"])
