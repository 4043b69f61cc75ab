"""`kestrel engine serve`: the API over HTTPS with a certificate of the api profile, marking
the jobs an earlier process left running failed, stopping cleanly on SIGTERM."""

import ctypes
import http.client
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from engine_lib import pki
from engine_lib.engine import Engine
from engine_lib.model import ApiJob

KESTREL = str(Path(sys.executable).parent / "kestrel")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, context: ssl.SSLContext, deadline: float) -> dict:
    while True:  # until the server listens
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_serve_answers_over_tls_for_its_address_and_fails_stale_jobs(tmp_path):
    pki.init_ca(str(tmp_path / "pki"))
    with Engine.open(engine_dir=str(tmp_path)) as engine, engine.store.transaction() as session:
        session.add(ApiJob(id="stale", operation="vms.ensure", user_name="u"))
    port = _free_port()
    server = subprocess.Popen([KESTREL, "engine", "serve", "--engine-dir", str(tmp_path),
                               "--bind", "127.0.0.1", "--port", str(port),
                               "--address", "localhost"], stderr=subprocess.PIPE, text=True)
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "pki" / pki.CA_CERT))
        root = _get(f"https://localhost:{port}/api/v1/", context, time.monotonic() + 30)
        assert "openapi" in root["links"]
        assert stat.S_IMODE(os.stat(tmp_path / "pki" / pki.API_KEY).st_mode) == 0o600
        with Engine.open(engine_dir=str(tmp_path)) as engine, \
                engine.store.transaction() as session:
            stale = session.get(ApiJob, "stale")
            assert stale.status == "failed" and "restarted" in stale.error["message"]
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=30)
    # uvicorn shuts down, then lets the signal end the process as it would have.
    assert server.returncode in (0, -signal.SIGTERM), errors
    assert "Traceback" not in errors


def test_serve_without_a_ca_says_to_init(tmp_path):
    result = subprocess.run([KESTREL, "engine", "serve", "--engine-dir", str(tmp_path),
                             "--port", str(_free_port()), "--address", "localhost"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "kestrel engine init" in result.stderr


def _nodelay_of_peer(pid: int, client: socket.socket) -> int:
    """TCP_NODELAY of the server process's end of ``client``'s connection (pidfd_getfd:
    a copy of the server's descriptor, so its own socket option is read)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            fd = libc.syscall(438, pidfd, int(name), 0)  # pidfd_getfd
            assert fd >= 0, os.strerror(ctypes.get_errno())
            copy = socket.socket(fileno=fd)
            try:
                if copy.family == socket.AF_INET and copy.type == socket.SOCK_STREAM \
                        and copy.getpeername() == client.getsockname():
                    return copy.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:  # a listener or a socket of another family: no peer
                pass
            finally:
                copy.close()
    finally:
        os.close(pidfd)
    raise AssertionError("the server holds no end of the client's connection")


def test_serve_sends_each_response_at_once(tmp_path):
    """TCP_NODELAY on the server's connections: a response written as headers, then body,
    otherwise waits out the client's delayed ACK (40 ms a request)."""
    pki.init_ca(str(tmp_path / "pki"))
    Engine.open(engine_dir=str(tmp_path)).close()
    port = _free_port()
    server = subprocess.Popen([KESTREL, "engine", "serve", "--engine-dir", str(tmp_path),
                               "--bind", "127.0.0.1", "--port", str(port),
                               "--address", "localhost"], stderr=subprocess.PIPE, text=True)
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "pki" / pki.CA_CERT))
        _get(f"https://localhost:{port}/api/v1/", context, time.monotonic() + 30)
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        connection.request("GET", "/api/v1/")  # kept alive: the server's end stays open
        assert connection.getresponse().read()
        assert _nodelay_of_peer(server.pid, connection.sock) == 1
        connection.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
