"""The engine's certificate authority: the root of trust between engine and agents.

Engine and agents talk over mutual TLS, and the only thing either side trusts
is this CA. The engine directory's ``pki/`` holds:

    ca.pem, ca.key          the CA (key 0600, never leaves the engine)
    engine.pem, engine.key  the engine's own client certificate

A host gets its certificate by enrollment: the host role makes a key and a CSR
on the host with ``openssl req -new -newkey rsa:3072 -nodes ...`` (the private
key never leaves the host), and the engine signs it with :func:`sign_csr`. The
engine decides the identity (CN and SANs) itself; whatever subject the CSR
asks for is ignored, so a host cannot enroll under another host's name.

Keys the engine generates itself are ECDSA P-256: fast to make (tests and the
lab issue many) and supported by every TLS 1.2+ stack we meet.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine_lib.protocol.errors import InvalidSpec, KestrelError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
ENGINE_CERT = "engine.pem"
ENGINE_KEY = "engine.key"
ENGINE_COMMON_NAME = "kestrel-engine"

CA_VALIDITY = datetime.timedelta(days=3650)
# oVirt's choice for host certificates since 4.4 (the CA/Browser limit).
LEAF_VALIDITY = datetime.timedelta(days=398)
# Tolerate clocks a little behind the engine's when a certificate is fresh.
BACKDATE = datetime.timedelta(minutes=5)
MIN_RSA_BITS = 2048

# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def init_ca(pki_dir: str, common_name: str = "kestrel engine CA") -> bool:
    """Create the CA and the engine's client certificate where missing.

    Never overwrites: re-running ``kestrel engine init`` must not invalidate
    every host's certificate. Returns True if anything was created.
    """
    pki = Path(pki_dir)
    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = False
    ca_cert, ca_key = pki / CA_CERT, pki / CA_KEY
    if ca_cert.exists() != ca_key.exists():
        missing = ca_key if ca_cert.exists() else ca_cert
        raise KestrelError(f"incomplete CA in {pki}: {missing.name} is missing; "
                           "restore it from backup rather than making a new CA",
                           pki_dir=str(pki))
    if not ca_cert.exists():
        key = _new_key()
        now = _now()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(ca_key, _key_pem(key), private=True)
        _write(ca_cert, cert.public_bytes(serialization.Encoding.PEM))
        created = True
    if not (pki / ENGINE_CERT).exists() or not (pki / ENGINE_KEY).exists():
        key = _new_key()
        cert = _sign(pki, key.public_key(), ENGINE_COMMON_NAME, [], server=False)
        _write(pki / ENGINE_KEY, _key_pem(key), private=True)
        _write(pki / ENGINE_CERT, cert)
        created = True
    return created


def sign_csr(pki_dir: str, csr_pem: bytes, name: str, addresses: list[str]) -> bytes:
    """Sign a host's CSR: a server and client certificate for ``name``.

    The certificate is valid for TLS server and client use (agents serve the
    engine and, for migration, talk to each other). CN is ``name``; the SANs
    are ``name`` as a DNS name plus every address given (IP addresses as IP
    SANs, host names as DNS SANs). Raises InvalidSpec if the CSR cannot be
    parsed, its self-signature is wrong, or its key is too weak.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise InvalidSpec("csr", f"not a PEM certificate signing request ({exc})") from None
    try:
        signature_ok = csr.is_signature_valid
    except UnsupportedAlgorithm as exc:
        raise InvalidSpec("csr", f"unsupported signature algorithm ({exc})") from None
    if not signature_ok:
        raise InvalidSpec("csr", "signature does not match its public key "
                                 "(corrupted or tampered request)")
    public_key = csr.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise InvalidSpec("csr", f"RSA key of {public_key.key_size} bits is too weak; "
                                     f"use at least {MIN_RSA_BITS}")
    elif not isinstance(public_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise InvalidSpec("csr", f"unsupported key type {type(public_key).__name__}")
    return _sign(Path(pki_dir), public_key, name, addresses, server=True)


def issue(pki_dir: str, name: str, addresses: list[str]) -> tuple[bytes, bytes]:
    """Make a key and a signed host certificate in one step: (key_pem, cert_pem).

    For tests and the lab, where the engine and the "host" share a machine;
    real hosts enroll through :func:`sign_csr` so their key stays home.
    """
    key = _new_key()
    cert = _sign(Path(pki_dir), key.public_key(), name, addresses, server=True)
    return _key_pem(key), cert


def _sign(pki: Path, public_key, name: str, addresses: list[str], *, server: bool) -> bytes:
    san = _subject_alt_names(name, addresses)
    ca_cert, ca_key = _load_ca(pki)
    now = _now()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
            content_commitment=False, data_encipherment=False, key_agreement=False,
            key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _subject_alt_names(name: str, addresses: list[str]) -> list[x509.GeneralName]:
    if not name or not name.strip() or "\x00" in name:
        raise InvalidSpec("name", "a certificate needs a non-empty common name")
    names: list[x509.GeneralName] = []
    for value in ([name] if _HOSTNAME.match(name) else []) + list(addresses):
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            if not _HOSTNAME.match(value):
                raise InvalidSpec("addresses", f"'{value}' is neither an IP address "
                                               "nor a host name") from None
            entry = x509.DNSName(value.lower())
        if entry not in names:
            names.append(entry)
    return names


def _load_ca(pki: Path):
    try:
        ca_cert = x509.load_pem_x509_certificate((pki / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((pki / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise KestrelError(f"no engine CA in {pki} ({exc.filename} is missing); "
                           "run 'kestrel engine init' first", pki_dir=str(pki)) from None
    return ca_cert, ca_key


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically; keys are created 0600 so they are never world-readable."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a stale temp file could carry a looser mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
