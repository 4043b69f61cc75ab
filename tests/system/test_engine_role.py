"""The kestrel.virt.engine role serving the engine API: a daemon (no systemd
here) with its certificate from the engine CA, and the first SuperUser whose
password appears in no output, command line or file of the role's."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from engine_fixtures import _collections_path

PASSWORD = "role-test-admin-password"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class EngineRole:
    def __init__(self, workdir: Path):
        self.workdir, self.engine_dir, self.port = workdir, workdir / "engine", _free_port()
        self.facts = workdir / "facts.json"

    def apply(self, addresses: list[str]) -> subprocess.CompletedProcess:
        play = [{
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable},
            "roles": [{"role": "kestrel.virt.engine", "vars": {
                "kestrel_engine_dir": str(self.engine_dir),
                "kestrel_engine_loop": False,
                "kestrel_engine_api_bind": "127.0.0.1",
                "kestrel_engine_api_port": self.port,
                "kestrel_engine_api_addresses": addresses,
                "kestrel_engine_admin_password": PASSWORD}}],
            "post_tasks": [{"ansible.builtin.copy": {
                "dest": str(self.facts), "mode": "0600",
                "content": "{{ {'url': kestrel_engine_url, 'ca_file': kestrel_engine_ca_file}"
                           " | to_json }}"}}],
        }]
        path = self.workdir / "engine.yml"
        path.write_text(yaml.safe_dump(play))
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": _collections_path(),
               "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_LOCALHOST_WARNING": "false",
               "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
        proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-vv",
                               str(path)], env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def pid(self) -> int:
        return int((self.engine_dir / "api.pid").read_text())

    def client(self) -> tuple[str, ssl.SSLContext]:
        facts = json.loads(self.facts.read_text())
        return facts["url"], ssl.create_default_context(cafile=facts["ca_file"])


@pytest.fixture
def role(tmp_path):
    role = EngineRole(tmp_path)
    yield role
    # Stop every API daemon this test started, by its pidfile's PID.
    pidfile = role.engine_dir / "api.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)


def _recap_changed(proc: subprocess.CompletedProcess) -> int:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("localhost"))
    return int(line.split("changed=")[1].split()[0])


def _login(url: str, context: ssl.SSLContext, password: str) -> dict:
    request = urllib.request.Request(
        f"{url}/api/v1/auth/token", method="POST",
        data=json.dumps({"username": "admin", "password": password}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        assert response.status == 201
        return json.loads(response.read())


def _whoami(url: str, context: ssl.SSLContext, token: str) -> dict:
    request = urllib.request.Request(f"{url}/api/v1/auth/whoami",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        return json.loads(response.read())


def _api_names(role: EngineRole) -> set[str]:
    cert = x509.load_pem_x509_certificate((role.engine_dir / "pki" / "api.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in names}


def test_the_role_serves_the_api_with_its_first_superuser(role):
    first = role.apply(["localhost"])
    url, context = role.client()
    assert url == f"https://localhost:{role.port}"
    pid = role.pid()
    assert _alive(pid)

    # The bootstrap admin logs in over TLS verified against the CA file the role names.
    login = _login(url, context, PASSWORD)
    assert {"role": "SuperUser", "object_type": "system", "object_name": ""} in [
        {key: grant[key] for key in ("role", "object_type", "object_name")}
        for grant in _whoami(url, context, login["token"])["permissions"]]
    with pytest.raises(urllib.error.HTTPError) as refused:
        _login(url, context, "not-the-password!")
    assert refused.value.code == 401

    # The password is in no output, no command line and no file the role wrote.
    assert PASSWORD not in first.stdout + first.stderr
    assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    for path in role.engine_dir.rglob("*"):
        if path.is_file() and path.suffix != ".db":
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert "localhost" in _api_names(role)

    # Again: nothing changes and the same daemon serves.
    assert _recap_changed(role.apply(["localhost"])) == 0
    assert role.pid() == pid

    # A new address: the daemon restarts with a certificate naming it.
    role.apply(["localhost", "127.0.0.1"])
    assert role.pid() != pid and not _alive(pid)
    assert {"localhost", "127.0.0.1"} <= _api_names(role)
    assert _login(url, context, PASSWORD)["user"] == "admin"
