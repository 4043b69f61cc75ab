"""Who the agent answers: only the engine's certificate, checked against the CA's CRL; and
the engine refusing a revoked agent. Real TLS on 127.0.0.1 (libvirt's test driver behind).

The same against agents on lab hosts: tests/system/test_certificate_profiles.py.
"""

from __future__ import annotations

import datetime
import http.client
import json
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine_lib import pki
from engine_lib.agent.api import Api
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.server import AgentServer, server_context
from engine_lib.broker import AgentClient, client_context
from engine_lib.protocol import certificates
from engine_lib.protocol.errors import CertificateError, InvalidSpec


@pytest.fixture
def engine_pki(tmp_path):
    path = tmp_path / "engine-pki"
    pki.init_ca(str(path))
    return path


def _agent(tmp_path, pki_dir, name="agent"):
    key, cert = pki.issue(str(pki_dir), name, ["127.0.0.1"])
    (tmp_path / f"{name}.key").write_bytes(key)
    (tmp_path / f"{name}.pem").write_bytes(cert)
    config = AgentConfig(name=name, address="127.0.0.1", port=0, libvirt_uri="test:///default",
                         ca=str(pki_dir / "ca.pem"), cert=str(tmp_path / f"{name}.pem"),
                         key=str(tmp_path / f"{name}.key"), source="test",
                         crl=str(tmp_path / "agent-crl.pem"))
    server = AgentServer(config, server_context(config), Api(config))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def agent(tmp_path, engine_pki):
    server = _agent(tmp_path, engine_pki)
    yield server
    server.shutdown()
    server.server_close()


def _client_context(pki_dir, cert_pem: bytes, key_pem: bytes, tmp_path) -> ssl.SSLContext:
    (tmp_path / "client.pem").write_bytes(cert_pem)
    (tmp_path / "client.key").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki_dir / "ca.pem"))
    context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    return context


def _get_host(server, context) -> tuple[int, dict]:
    conn = http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=context,
                                       timeout=10)
    try:
        conn.request("GET", "/api/v1/host")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _forged(pki_dir, subject: list[tuple], usages: list) -> tuple[bytes, bytes]:
    """A certificate the engine CA signed, outside any profile the engine issues."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in subject]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_the_engine_gets_an_answer(agent, engine_pki):
    assert AgentClient("127.0.0.1", agent.server_address[1], str(engine_pki)).host_info()


def test_a_hosts_agent_certificate_is_no_client_certificate(agent, engine_pki, tmp_path):
    key, cert = pki.issue(str(engine_pki), "h2", ["127.0.0.2"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get_host(agent, _client_context(engine_pki, cert, key, tmp_path))


def test_the_engine_apis_server_certificate_is_no_client_certificate(agent, engine_pki,
                                                                     tmp_path):
    pki.ensure_api_certificate(str(engine_pki), ["127.0.0.1"])
    context = _client_context(engine_pki, (engine_pki / pki.API_CERT).read_bytes(),
                              (engine_pki / pki.API_KEY).read_bytes(), tmp_path)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get_host(agent, context)


def test_the_agent_check_refuses_the_api_profile_whatever_its_usage(engine_pki):
    # Even a CA-signed OU=api certificate that could act as a client is not the engine.
    cert, _ = _forged(engine_pki, [(NameOID.ORGANIZATION_NAME, "kestrel"),
                                   (NameOID.ORGANIZATIONAL_UNIT_NAME, "api"),
                                   (NameOID.COMMON_NAME, "kestrel-engine")],
                      [ExtendedKeyUsageOID.CLIENT_AUTH,
                       x509.ObjectIdentifier(certificates.ENGINE_CLIENT_OID)])
    loaded = x509.load_pem_x509_certificate(cert)
    peer = {"subject": ((("organizationName", "kestrel"),),
                        (("organizationalUnitName", "api"),),
                        (("commonName", "kestrel-engine"),))}
    refusal = certificates.engine_client_refusal(
        peer, loaded.public_bytes(serialization.Encoding.DER))
    assert refusal and "OU=api" in refusal


@pytest.mark.parametrize("profile", ["libvirt", "migration"])
def test_a_hosts_libvirt_or_qemu_certificate_gets_403(agent, engine_pki, tmp_path, profile):
    key, cert = pki.issue(str(engine_pki), "h2", ["127.0.0.2"], profile)
    status, document = _get_host(agent, _client_context(engine_pki, cert, key, tmp_path))
    assert status == 403
    assert document["error"]["code"] == "CertificateError"
    assert f"OU={profile}" in document["error"]["message"]


@pytest.mark.parametrize("subject, usages, why", [
    ([(NameOID.COMMON_NAME, "anything")], [ExtendedKeyUsageOID.CLIENT_AUTH],
     "is not the engine's"),
    ([(NameOID.ORGANIZATION_NAME, "kestrel"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "engine"),
      (NameOID.COMMON_NAME, "kestrel-engine")], [ExtendedKeyUsageOID.CLIENT_AUTH],
     "lacks the engine's"),
    ([(NameOID.ORGANIZATION_NAME, "kestrel"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "engine"),
      (NameOID.COMMON_NAME, "h1")],
     [ExtendedKeyUsageOID.CLIENT_AUTH, x509.ObjectIdentifier(certificates.ENGINE_CLIENT_OID)],
     "is not the engine's"),
])
def test_a_ca_signed_certificate_outside_the_engine_profile_gets_403(
        agent, engine_pki, tmp_path, subject, usages, why):
    cert, key = _forged(engine_pki, subject, usages)
    status, document = _get_host(agent, _client_context(engine_pki, cert, key, tmp_path))
    assert status == 403 and why in document["error"]["message"]


def test_refusal_reads_the_extended_key_usage_from_der(engine_pki):
    engine = x509.load_pem_x509_certificate((engine_pki / "engine.pem").read_bytes())
    der = engine.public_bytes(serialization.Encoding.DER)
    assert certificates.extended_key_usages(der) == [
        "1.3.6.1.5.5.7.3.2", certificates.ENGINE_CLIENT_OID]
    assert certificates.engine_client_refusal(None, None) == "no client certificate"
    assert "unreadable" in certificates.engine_client_refusal(
        {"subject": ((("organizationName", "kestrel"),),
                     (("organizationalUnitName", "engine"),),
                     (("commonName", "kestrel-engine"),))}, der[:40])


# -- the CRL ----------------------------------------------------------------------------------


def test_a_crl_pushed_by_the_engine_applies_from_the_next_connection(agent, engine_pki,
                                                                     tmp_path):
    key, cert = pki.issue(str(engine_pki), "h9", [], "libvirt")
    context = _client_context(engine_pki, cert, key, tmp_path)
    assert _get_host(agent, context)[0] == 403  # past the handshake: the CA signed it
    pki.revoke(str(engine_pki), "h9")

    client = AgentClient("127.0.0.1", agent.server_address[1], str(engine_pki))
    result = client.install_crl((engine_pki / "crl.pem").read_text())

    assert result["installed"] == [str(tmp_path / "agent-crl.pem")]
    # Now refused in the handshake (under TLS 1.3 the client may see the alert or an EOF).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get_host(agent, context)
    assert client.host_info()  # the engine still gets in


def test_a_crl_from_another_ca_is_refused_and_changes_nothing(agent, engine_pki, tmp_path):
    foreign = tmp_path / "foreign"
    pki.init_ca(str(foreign), "some other CA")
    client = AgentClient("127.0.0.1", agent.server_address[1], str(engine_pki))
    with pytest.raises(InvalidSpec, match="not signed by the engine CA") as err:
        client.install_crl((foreign / "crl.pem").read_text())
    assert err.value.field == "crl"
    with pytest.raises(InvalidSpec, match="not a PEM certificate revocation list"):
        client.install_crl("hello")
    assert not (tmp_path / "agent-crl.pem").exists()
    assert client.host_info()


def test_the_engine_refuses_an_agent_whose_host_was_revoked(engine_pki, tmp_path):
    server = _agent(tmp_path, engine_pki, name="h9")
    try:
        assert AgentClient("127.0.0.1", server.server_address[1], str(engine_pki)).host_info()
        pki.revoke(str(engine_pki), "h9")
        # Engine.agent() makes a client, and so reads the CRL, for every call.
        with pytest.raises(CertificateError, match="revoked"):
            AgentClient("127.0.0.1", server.server_address[1], str(engine_pki)).host_info()
    finally:
        server.shutdown()
        server.server_close()


def test_client_context_without_a_crl_still_loads(engine_pki):
    (engine_pki / "crl.pem").unlink()
    assert not client_context(str(engine_pki)).verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
