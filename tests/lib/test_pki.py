"""The engine CA: creation, host enrollment from an openssl CSR, certificates that verify."""

from __future__ import annotations

import datetime
import fnmatch
import ipaddress
import os
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
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


def _openssl_csr(tmp_path, subject: str = "/CN=whoever", key: str = "rsa") -> bytes:
    """What the host role runs on a host: the key never leaves it (``key="ec"``: faster)."""
    newkey = (["-newkey", "rsa:3072"] if key == "rsa"
              else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
    subprocess.run(["openssl", "req", "-new", *newkey, "-nodes",
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


# -- profiles: no host certificate can be the engine -------------------------------------------


def _usages(cert_pem: bytes) -> list:
    return list(x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value)


@pytest.mark.parametrize("profile", ["libvirt", "migration"])
def test_libvirt_and_migration_profiles_are_both_ends_under_their_own_unit(pki_dir, profile):
    _, cert_pem = pki.issue(str(pki_dir), "h1", ["10.77.0.1"], profile)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.rfc4514_string() == f"CN=h1,OU={profile},O=kestrel"
    assert _usages(cert_pem) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_an_unknown_or_the_engine_profile_is_refused_by_name(pki_dir, tmp_path):
    for profile in ("engine", "root"):
        with pytest.raises(InvalidSpec, match=f"'{profile}' is not a host certificate profile") \
                as err:
            pki.sign_csr(str(pki_dir), _openssl_csr(tmp_path, key="ec"), "h1", [], profile)
        assert err.value.field == "profile"


@pytest.mark.parametrize("name, addresses, field", [
    ("kestrel-engine", [], "name"),
    ("Kestrel-Engine", [], "name"),
    ("h1", ["10.77.0.1", "KESTREL-ENGINE"], "addresses"),
    ("h1,OU=engine", [], "name"),
])
def test_signing_refuses_a_host_that_claims_the_engines_name(pki_dir, tmp_path, name, addresses,
                                                             field):
    with pytest.raises(InvalidSpec) as err:
        pki.sign_csr(str(pki_dir), _openssl_csr(tmp_path, key="ec"), name, addresses)
    assert err.value.field == field


@pytest.mark.parametrize("subject", ["/CN=kestrel-engine", "/O=kestrel/OU=engine/CN=h1"])
def test_signing_refuses_a_csr_that_asks_for_the_engines_subject(pki_dir, tmp_path, subject):
    with pytest.raises(InvalidSpec, match="asks for the engine's identity") as err:
        pki.sign_csr(str(pki_dir), _openssl_csr(tmp_path, subject, "ec"), "h1", [])
    assert err.value.field == "csr"


def test_signing_refuses_a_csr_that_asks_for_the_engines_key_usage(pki_dir, tmp_path):
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "k"),
                    "-out", str(tmp_path / "r"), "-subj", "/CN=h1", "-addext",
                    f"extendedKeyUsage=clientAuth,{certificates.ENGINE_CLIENT_OID}"],
                   check=True, capture_output=True)
    with pytest.raises(InvalidSpec, match="the engine's extended key usage"):
        pki.sign_csr(str(pki_dir), (tmp_path / "r").read_bytes(), "h1", [])


# -- revocation ---------------------------------------------------------------------------------


def _crl_check(cert_pem: bytes, pki_dir) -> subprocess.CompletedProcess:
    cert = pki_dir / "leaf.pem"
    cert.write_bytes(cert_pem)
    return subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(pki_dir / "ca.pem"),
                           "-CRLfile", str(pki_dir / "crl.pem"), str(cert)],
                          capture_output=True, text=True)


def test_revoking_a_host_revokes_each_of_its_certificates_and_only_those(pki_dir):
    mine = [pki.issue(str(pki_dir), "h1", [], profile)[1]
            for profile in ("agent", "libvirt", "migration")]
    other = pki.issue(str(pki_dir), "h2", [])[1]
    assert all(_crl_check(cert, pki_dir).returncode == 0 for cert in [*mine, other])

    revoked = pki.revoke(str(pki_dir), "h1")

    assert sorted(revoked) == sorted(f"{x509.load_pem_x509_certificate(c).serial_number:x}"
                                     for c in mine)
    for cert in mine:
        check = _crl_check(cert, pki_dir)
        assert check.returncode != 0 and "revoked" in check.stdout + check.stderr
    assert _crl_check(other, pki_dir).returncode == 0
    assert _crl_check((pki_dir / "engine.pem").read_bytes(), pki_dir).returncode == 0
    crl = x509.load_pem_x509_crl((pki_dir / "crl.pem").read_bytes())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert pki.revoke(str(pki_dir), "h1") == []  # nothing left to revoke: the CRL stays
    assert x509.load_pem_x509_crl((pki_dir / "crl.pem").read_bytes()).extensions \
        .get_extension_for_class(x509.CRLNumber).value.crl_number == number
    assert stat.S_IMODE(os.stat(pki_dir / "issued.json").st_mode) == 0o600


def test_the_engine_cannot_be_revoked_as_a_host_and_no_ca_means_nothing_to_revoke(
        pki_dir, tmp_path):
    with pytest.raises(InvalidSpec, match="the engine's own name"):
        pki.revoke(str(pki_dir), "kestrel-engine")
    assert pki.revoke(str(tmp_path / "none"), "h1") == []


def test_engine_init_upgrades_an_engine_certificate_without_the_profile(pki_dir):
    """An engine certificate from before profiles (CN only, clientAuth) is re-issued and
    the old one revoked; the CA and the hosts' certificates stay."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    legacy = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                          "kestrel-engine")]))
              .issuer_name(ca_cert.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
              .sign(ca_key, hashes.SHA256()).public_bytes(Encoding.PEM))
    (pki_dir / "engine.pem").write_bytes(legacy)
    (pki_dir / "crl.pem").unlink()
    ca = (pki_dir / "ca.pem").read_bytes()
    host_cert = pki.issue(str(pki_dir), "h1", [])[1]

    assert pki.init_ca(str(pki_dir)) is True

    assert (pki_dir / "ca.pem").read_bytes() == ca
    upgraded = (pki_dir / "engine.pem").read_bytes()
    assert ObjectIdentifier(certificates.ENGINE_CLIENT_OID) in _usages(upgraded)
    assert _crl_check(legacy, pki_dir).returncode != 0
    assert _crl_check(upgraded, pki_dir).returncode == 0
    assert _crl_check(host_cert, pki_dir).returncode == 0
    assert pki.init_ca(str(pki_dir)) is False  # idempotent from then on


def test_the_host_role_admits_the_libvirt_profile_by_the_subject_gnutls_prints(pki_dir):
    role = (Path(__file__).parents[2] / "roles/host/tasks/libvirt_tls.yml").read_text()
    assert f'tls_allowed_dn_list, value: \'["{certificates.LIBVIRT_ALLOWED_DN}"]\'' in role
    # GnuTLS (libvirt's x509 DN check) prints the subject in certificate order.
    subject = x509.load_pem_x509_certificate(pki.issue(str(pki_dir), "h1", [], "libvirt")[1]) \
        .subject
    printed = ",".join(f"{a.rfc4514_attribute_name}={a.value}" for a in subject)
    assert fnmatch.fnmatchcase(printed, certificates.LIBVIRT_ALLOWED_DN)
    migration = x509.load_pem_x509_certificate(
        pki.issue(str(pki_dir), "h1", [], "migration")[1]).subject
    assert not fnmatch.fnmatchcase(
        ",".join(f"{a.rfc4514_attribute_name}={a.value}" for a in migration),
        certificates.LIBVIRT_ALLOWED_DN)


def _sans(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in names}


def test_the_api_certificate_serves_only_and_follows_its_addresses(pki_dir):
    assert pki.ensure_api_certificate(str(pki_dir), ["engine.example.org", "192.0.2.5"])
    first = x509.load_pem_x509_certificate((pki_dir / pki.API_CERT).read_bytes())
    assert stat.S_IMODE(os.stat(pki_dir / pki.API_KEY).st_mode) == 0o600
    assert first.subject.rfc4514_string() == "CN=engine.example.org,OU=api,O=kestrel"
    usage = first.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _sans(first) == {"engine.example.org", "192.0.2.5"}
    # the same addresses: kept; others: a new certificate, the old one revoked
    assert not pki.ensure_api_certificate(str(pki_dir), ["192.0.2.5", "engine.example.org"])
    assert pki.ensure_api_certificate(str(pki_dir), ["api.example.org"])
    second = x509.load_pem_x509_certificate((pki_dir / pki.API_CERT).read_bytes())
    assert _sans(second) == {"api.example.org"}
    crl = x509.load_pem_x509_crl((pki_dir / pki.CRL).read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None
    # revoking a host of the same name leaves the API's certificate alone
    assert pki.revoke(str(pki_dir), "api.example.org") == []


def test_the_api_certificate_needs_an_address(pki_dir):
    with pytest.raises(InvalidSpec) as caught:
        pki.ensure_api_certificate(str(pki_dir), [])
    assert caught.value.field == "addresses"
