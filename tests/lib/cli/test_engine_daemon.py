"""`kestrel engine run|serve --daemon`: the engine loop and API as services on hosts
without systemd."""

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine_lib import pki
from engine_lib.engine import Engine
from engine_lib.model import Cluster, Host

KESTREL = str(Path(sys.executable).parent / "kestrel")


def alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


@pytest.fixture
def engine_dir(tmp_path):
    pki.init_ca(str(tmp_path / "pki"))
    with Engine.open(engine_dir=str(tmp_path)) as engine, engine.store.transaction() as session:
        cluster = Cluster(name="c1", description="", virt_type="qemu",
                          memory_overcommit_percent=100, mac_pool=[])
        # Nothing listens on loopback port 9: this host's agent is silent.
        session.add(Host(name="h1", cluster=cluster, address="127.0.0.1", port=9, status="Up"))
    return tmp_path


def test_the_daemon_runs_the_loop_refuses_a_twin_and_stops_cleanly(engine_dir):
    pidfile = engine_dir / "engine.pid"
    command = [KESTREL, "engine", "run", "--engine-dir", str(engine_dir), "--daemon",
               "--pidfile", str(pidfile), "--host-interval", "0.2"]
    assert subprocess.run(command, timeout=30).returncode == 0
    pid = int(pidfile.read_text())
    try:
        assert alive(pid)
        twin = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert twin.returncode == 1
        assert f"the engine loop is already running (pid {pid}" in twin.stderr

        with Engine.open(engine_dir=str(engine_dir)) as engine:
            wait_for(lambda: engine.hosts.info()[0]["status"] == "Connecting")
            last = engine.events.info(entity_name="h1")[-1]
            assert "127.0.0.1:9" in last["message"] and last["user"] == "engine"
        assert "host h1 is Connecting" in (engine_dir / "engine.log").read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid))
    assert not pidfile.exists()


def test_an_engine_without_its_ca_refuses_to_start(tmp_path):
    result = subprocess.run([KESTREL, "engine", "run", "--engine-dir", str(tmp_path), "--daemon",
                             "--pidfile", str(tmp_path / "engine.pid")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "kestrel engine init" in result.stderr


def test_daemon_without_pidfile_is_refused(engine_dir):
    result = subprocess.run([KESTREL, "engine", "run", "--engine-dir", str(engine_dir),
                             "--daemon"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--pidfile: is required with --daemon" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_api_daemon_serves_refuses_a_twin_and_a_busy_port_and_stops_cleanly(engine_dir):
    port = _free_port()
    pidfile = engine_dir / "api.pid"
    command = [KESTREL, "engine", "serve", "--engine-dir", str(engine_dir), "--bind",
               "127.0.0.1", "--port", str(port), "--address", "localhost", "--daemon",
               "--pidfile", str(pidfile)]
    assert subprocess.run(command, timeout=60).returncode == 0
    pid = int(pidfile.read_text())
    try:
        # Ready means listening: the first request right away is answered over TLS.
        context = ssl.create_default_context(cafile=str(engine_dir / "pki" / "ca.pem"))
        with urllib.request.urlopen(f"https://localhost:{port}/api/v1/", context=context,
                                    timeout=30) as response:
            assert "links" in json.loads(response.read())
        twin = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert twin.returncode == 1
        assert f"the engine API is already running (pid {pid}" in twin.stderr

        other = engine_dir / "other.pid"
        busy = subprocess.run([*command[:-1], str(other)], capture_output=True, text=True,
                              timeout=60)
        assert busy.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
        assert not other.exists()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid))
    assert not pidfile.exists()
    assert (engine_dir / "api.log").exists()
