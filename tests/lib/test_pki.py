"""The engine CA: creation, host enrollment from an openssl CSR, certificates that verify."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from engine_lib import pki
from engine_lib.protocol import certificates
from engine_lib.protocol.errors import InvalidSpec, KestrelError


@pytest.fixture
def pki_dir(tmp_path):
    path = tmp_path / "pki"
    assert pki.init_ca(str(path)) is True
    return path


def _verify(cert_pem: bytes, pki_dir) -> subprocess.CompletedProcess:
    """openssl's own verdict: the chain a TLS peer would check."""
    cert = pki_dir / "leaf.pem"
    cert.write_bytes(cert_pem)
    return subprocess.run(["openssl", "verify", "-CAfile", str(pki_dir / "ca.pem"), str(cert)],
                          capture_output=True, text=True)


def _openssl_csr(tmp_path, subject: str = "/CN=whoever") -> bytes:
    """What the host role runs on a host: the key never leaves it."""
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:3072", "-nodes",
                    "-keyout", str(tmp_path / "host.key"), "-out", str(tmp_path / "host.csr"),
                    "-subj", subject], check=True, capture_output=True)
    return (tmp_path / "host.csr").read_bytes()


def test_init_ca_creates_ca_and_engine_certificate_with_private_keys(pki_dir):
    for name in ("ca.pem", "ca.key", "engine.pem", "engine.key"):
        assert (pki_dir / name).is_file(), name
    for key in ("ca.key", "engine.key"):
        assert stat.S_IMODE(os.stat(pki_dir / key).st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kestrel engine CA"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    engine = (pki_dir / "engine.pem").read_bytes()
    assert _verify(engine, pki_dir).returncode == 0
    usage = x509.load_pem_x509_certificate(engine).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH,
                           ObjectIdentifier(certificates.ENGINE_CLIENT_OID)]
    assert x509.load_pem_x509_certificate(engine).subject.rfc4514_string() == \
        "CN=kestrel-engine,OU=engine,O=kestrel"
    assert (pki_dir / "crl.pem").is_file()


def test_init_ca_never_overwrites(pki_dir):
    before = {p.name: p.read_bytes() for p in pki_dir.iterdir()}
    assert pki.init_ca(str(pki_dir)) is False
    assert {p.name: p.read_bytes() for p in pki_dir.iterdir()} == before


def test_init_ca_recreates_only_a_missing_engine_certificate(pki_dir):
    ca = (pki_dir / "ca.pem").read_bytes()
    (pki_dir / "engine.pem").unlink()
    assert pki.init_ca(str(pki_dir)) is True
    assert (pki_dir / "ca.pem").read_bytes() == ca
    assert _verify((pki_dir / "engine.pem").read_bytes(), pki_dir).returncode == 0


def test_init_ca_refuses_half_a_ca(pki_dir):
    (pki_dir / "ca.key").unlink()
    with pytest.raises(KestrelError, match="ca.key is missing"):
        pki.init_ca(str(pki_dir))


def test_sign_openssl_csr_gives_an_agent_certificate_that_is_no_client(pki_dir, tmp_path):
    cert_pem = pki.sign_csr(str(pki_dir), _openssl_csr(tmp_path, "/CN=evil-host"), "h1",
                            ["10.77.0.1", "h1.lab.example"])
    assert _verify(cert_pem, pki_dir).returncode == 0
    cert = x509.load_pem_x509_certificate(cert_pem)
    # The engine decides the identity, not the CSR.
    assert cert.subject.rfc4514_string() == "CN=h1,OU=agent,O=kestrel"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["h1", "h1.lab.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.77.0.1")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # The certificate carries the host's own key from the CSR.
    key_check = subprocess.run(["openssl", "x509", "-noout", "-pubkey"], input=cert_pem,
                               capture_output=True, check=True).stdout
    host_pub = subprocess.run(["openssl", "pkey", "-pubout", "-in", str(tmp_path / "host.key")],
                              capture_output=True, check=True).stdout
    assert key_check == host_pub


def test_sign_csr_rejects_garbage_and_tampered_requests(pki_dir, tmp_path):
    with pytest.raises(InvalidSpec, match="not a PEM certificate signing request") as err:
        pki.sign_csr(str(pki_dir), b"hello", "h1", [])
    assert err.value.field == "csr"
    csr = x509.load_pem_x509_csr(_openssl_csr(tmp_path))
    der = bytearray(csr.tbs_certrequest_bytes)
    # Flip a byte inside the signed part (the CN), keeping the DER structure valid.
    index = bytes(der).index(b"whoever")
    tampered_pem = _reassemble(csr, bytes(der[:index]) + b"X" + bytes(der[index + 1:]))
    with pytest.raises(InvalidSpec, match="signature does not match"):
        pki.sign_csr(str(pki_dir), tampered_pem, "h1", [])


def _reassemble(csr: x509.CertificateSigningRequest, tbs: bytes) -> bytes:
    """The CSR with its signed part replaced and the original signature kept."""
    der = csr.public_bytes(Encoding.DER).replace(csr.tbs_certrequest_bytes, tbs)
    return ssl.DER_cert_to_PEM_cert(der).replace("CERTIFICATE", "CERTIFICATE REQUEST").encode()


def test_sign_csr_rejects_weak_rsa_key(pki_dir, tmp_path):
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:1024", "-nodes", "-keyout",
                    str(tmp_path / "k"), "-out", str(tmp_path / "r"), "-subj", "/CN=x"],
                   check=True, capture_output=True)
    with pytest.raises(InvalidSpec, match="1024 bits is too weak"):
        pki.sign_csr(str(pki_dir), (tmp_path / "r").read_bytes(), "h1", [])


def test_issue_gives_a_key_and_certificate_that_belong_together(pki_dir, tmp_path):
    key_pem, cert_pem = pki.issue(str(pki_dir), "h2", ["10.77.0.2"])
    assert _verify(cert_pem, pki_dir).returncode == 0
    (tmp_path / "k.pem").write_bytes(key_pem)
    key_pub = subprocess.run(["openssl", "pkey", "-pubout", "-in", str(tmp_path / "k.pem")],
                             capture_output=True, check=True).stdout
    cert_pub = subprocess.run(["openssl", "x509", "-noout", "-pubkey"], input=cert_pem,
                              capture_output=True, check=True).stdout
    assert key_pub == cert_pub


def test_bad_addresses_are_refused_by_name(pki_dir):
    with pytest.raises(InvalidSpec, match="'not an address!' is neither an IP address") as err:
        pki.issue(str(pki_dir), "h1", ["not an address!"])
    assert err.value.field == "addresses"


def test_signing_without_a_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(KestrelError, match="kestrel engine init"):
        pki.issue(str(tmp_path / "nothing"), "h1", [])
