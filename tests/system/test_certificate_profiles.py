"""Agents on lab hosts answer only the engine: not another host's agent certificate (the
one it really runs with), not a QEMU migration certificate from the same CA.

Over loopback with every kind of forged certificate: tests/lib/agent/test_peer_authorization.py.
libvirtd's side: tests/system/test_migration_tls.py.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path

import pytest
from agent_fixtures import AGENT_PORT, run_in_host

from engine_lib import pki

pytestmark = pytest.mark.lab


def get_host(address: str, ca: str, cert: Path, key: Path) -> tuple[int, dict]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca)
    context.load_cert_chain(cert, key)
    conn = http.client.HTTPSConnection(address, AGENT_PORT, context=context, timeout=10)
    try:
        conn.request("GET", "/api/v1/host")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture
def h1_h2(agents):
    by_name = {agent.name: agent for agent in agents}
    return by_name["h1"], by_name["h2"]


def test_an_agent_refuses_another_hosts_agent_certificate(h1_h2, engine_pki_dir, tmp_path):
    h1, h2 = h1_h2
    for name in ("agent.pem", "agent.key"):  # what h2 really holds
        (tmp_path / name).write_bytes(run_in_host(h2.host, ["cat", f"/etc/kestrel/pki/{name}"])
                                      .stdout)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get_host(h1.address, f"{engine_pki_dir}/ca.pem", tmp_path / "agent.pem",
                 tmp_path / "agent.key")
    assert h1.client().host_info()["hostname"]  # the engine still gets in


def test_an_agent_refuses_a_qemu_migration_certificate(h1_h2, engine_pki_dir, tmp_path):
    h1, h2 = h1_h2
    key, cert = pki.issue(engine_pki_dir, h2.name, [h2.address], "migration")
    (tmp_path / "m.pem").write_bytes(cert)
    (tmp_path / "m.key").write_bytes(key)
    status, document = get_host(h1.address, f"{engine_pki_dir}/ca.pem", tmp_path / "m.pem",
                                tmp_path / "m.key")
    assert status == 403 and document["error"]["code"] == "CertificateError"
    assert "OU=migration" in document["error"]["message"]
    assert "hostname" not in document
