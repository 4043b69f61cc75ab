"""The engine's certificate authority: the root of trust between engine and agents.

Engine and agents talk over mutual TLS, and the only thing either side trusts
is this CA. The engine directory's ``pki/`` holds:

    ca.pem, ca.key          the CA (key 0600, never leaves the engine)
    engine.pem, engine.key  the engine's own client certificate (the engine profile)
    api.pem, api.key        the REST API's server certificate (the api profile), made by
                            :func:`ensure_api_certificate`
    issued.json             every certificate signed: serial, name, profile, revocation
    crl.pem                 the revocation list hosts install (agent, libvirt, QEMU)

A host gets its certificates by enrollment: the host role makes a key and a CSR
on the host with ``openssl req -new -newkey rsa:3072 -nodes ...`` (the private
key never leaves the host), and the engine signs it with :func:`sign_csr` for
one profile (engine_lib.protocol.certificates: agent, libvirt, migration). The
engine decides the identity (subject and SANs) itself; whatever subject the CSR
asks for is ignored, so a host cannot enroll under another host's name, and a
request naming the engine or asking for its profile is refused.

Removing a host revokes every certificate issued for its name (:func:`revoke`);
the CRL is rewritten and the engine hands it to the hosts.

Keys the engine generates itself are ECDSA P-256: fast to make (tests and the
lab issue many) and supported by every TLS 1.2+ stack we meet.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from engine_lib.protocol import certificates as profiles
from engine_lib.protocol.errors import InvalidSpec, KestrelError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
ENGINE_CERT = "engine.pem"
ENGINE_KEY = "engine.key"
API_CERT = "api.pem"
API_KEY = "api.key"
# How issued.json names the API's certificates: never a host's name (a host may not be
# called kestrel-engine), so revoking a host never touches them.
API_RECORD = f"{profiles.ENGINE_NAME}/api"
CRL = "crl.pem"
INDEX = "issued.json"
_LOCK = ".lock"
ENGINE_COMMON_NAME = profiles.ENGINE_NAME

_ENGINE_CLIENT = ObjectIdentifier(profiles.ENGINE_CLIENT_OID)
# Profile -> extended key usage. Agents only serve; libvirtd and QEMU are both
# ends of a migration (server on the destination, client on the source).
USAGES = {
    profiles.ENGINE: [ExtendedKeyUsageOID.CLIENT_AUTH, _ENGINE_CLIENT],
    profiles.AGENT: [ExtendedKeyUsageOID.SERVER_AUTH],
    profiles.LIBVIRT: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    profiles.MIGRATION: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    profiles.API: [ExtendedKeyUsageOID.SERVER_AUTH],
}

CA_VALIDITY = datetime.timedelta(days=3650)
# oVirt's choice for host certificates since 4.4 (the CA/Browser limit).
LEAF_VALIDITY = datetime.timedelta(days=398)
# Tolerate clocks a little behind the engine's when a certificate is fresh.
BACKDATE = datetime.timedelta(minutes=5)
MIN_RSA_BITS = 2048

# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# A host's name as the engine knows it (spec.name): nothing a DN needs to escape.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def init_ca(pki_dir: str, common_name: str = "kestrel engine CA") -> bool:
    """Create the CA, the engine's client certificate and the CRL where missing.

    Never replaces the CA: re-running ``kestrel engine init`` must not invalidate
    every host's certificate. An engine certificate without the engine profile
    (issued before profiles existed) is re-issued and the old one revoked: that
    is the upgrade step. Returns True if anything was created.
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
    with _locked(pki):
        old = _engine_certificate(pki)
        if old is None or not _has_engine_profile(old):
            key = _new_key()
            cert = _sign(pki, key.public_key(), ENGINE_COMMON_NAME, [], profiles.ENGINE)
            _write(pki / ENGINE_KEY, _key_pem(key), private=True)
            _write(pki / ENGINE_CERT, cert)
            if old is not None:
                _record(pki, old, ENGINE_COMMON_NAME, profiles.ENGINE,
                        revoked=_now().isoformat())
            created = True
        if created or not (pki / CRL).exists():
            _write_crl(pki)
            created = True
    return created


def _engine_certificate(pki: Path) -> x509.Certificate | None:
    if not (pki / ENGINE_CERT).exists() or not (pki / ENGINE_KEY).exists():
        return None
    return x509.load_pem_x509_certificate((pki / ENGINE_CERT).read_bytes())


def _has_engine_profile(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return _ENGINE_CLIENT in usage and cert.subject == _subject(profiles.ENGINE,
                                                                ENGINE_COMMON_NAME)


def sign_csr(pki_dir: str, csr_pem: bytes, name: str, addresses: list[str],
             profile: str = profiles.AGENT) -> bytes:
    """Sign a host's CSR: a certificate of ``profile`` (agent, libvirt, migration) for ``name``.

    Subject O=kestrel, OU=<profile>, CN=<name>; the SANs are ``name`` as a DNS
    name plus every address given (IP addresses as IP SANs, host names as DNS
    SANs); the extended key usage is the profile's (USAGES). Raises InvalidSpec
    if the CSR cannot be parsed, its self-signature is wrong, its key is too
    weak, or it (or ``name``) claims the engine's identity.
    """
    _check_profile(profile)
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
    _refuse_engine_request(csr)
    return _sign_host(Path(pki_dir), public_key, name, addresses, profile)


def issue(pki_dir: str, name: str, addresses: list[str],
          profile: str = profiles.AGENT) -> tuple[bytes, bytes]:
    """Make a key and a signed host certificate in one step: (key_pem, cert_pem).

    For tests and the lab, where the engine and the "host" share a machine;
    real hosts enroll through :func:`sign_csr` so their key stays home.
    """
    _check_profile(profile)
    key = _new_key()
    return _key_pem(key), _sign_host(Path(pki_dir), key.public_key(), name, addresses, profile)


def ensure_api_certificate(pki_dir: str, addresses: list[str]) -> bool:
    """The API's server certificate for ``addresses`` (its SANs; the first is the CN).

    Kept while its SANs are the addresses asked for and it has months left; else a new
    key and certificate replace it and the old one is revoked. Returns True if issued.
    """
    if not addresses:
        raise InvalidSpec("addresses", "the API needs at least one address to be reached at")
    pki = Path(pki_dir)
    wanted = _subject_alt_names(addresses[0], addresses)
    with _locked(pki):
        old = None
        if (pki / API_CERT).exists() and (pki / API_KEY).exists():
            old = x509.load_pem_x509_certificate((pki / API_CERT).read_bytes())
            if _api_certificate_fits(old, wanted):
                return False
        key = _new_key()
        cert = _sign(pki, key.public_key(), addresses[0], addresses, profiles.API,
                     record_as=API_RECORD)
        _write(pki / API_KEY, _key_pem(key), private=True)
        _write(pki / API_CERT, cert)
        if old is not None:
            _record(pki, old, API_RECORD, profiles.API, revoked=_now().isoformat())
            _write_crl(pki)
    return True


def _api_certificate_fits(cert: x509.Certificate, wanted: list[x509.GeneralName]) -> bool:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    left = cert.not_valid_after_utc - _now()
    return (set(names) == set(wanted) and left > LEAF_VALIDITY / 4
            and cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
            == profiles.API)


def revoke(pki_dir: str, name: str) -> list[str]:
    """Revoke every certificate issued for host ``name`` and rewrite the CRL.

    Returns the serial numbers (hex) revoked now; [] when there were none left
    to revoke (idempotent), or when the engine has no CA at all.
    """
    pki = Path(pki_dir)
    if name.lower() == ENGINE_COMMON_NAME:
        raise InvalidSpec("name", f"'{name}' is the engine's own name, not a host's")
    if not (pki / CA_KEY).exists():
        return []
    with _locked(pki):
        index = _read_index(pki)
        now = _now().isoformat()
        revoked = [serial for serial, entry in index["certificates"].items()
                   if entry["name"] == name and not entry.get("revoked")]
        for serial in revoked:
            index["certificates"][serial]["revoked"] = now
        if revoked:
            _write_index(pki, index)
            _write_crl(pki)
    return revoked


def crl(pki_dir: str) -> bytes:
    """The current CRL (PEM); made by ``kestrel engine init``."""
    path = Path(pki_dir) / CRL
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KestrelError(f"no certificate revocation list {path}; run 'kestrel engine "
                           "init' (it makes one for an existing CA)", pki_dir=pki_dir) from None


def _check_profile(profile: str) -> None:
    if profile not in profiles.HOST_PROFILES:
        raise InvalidSpec("profile", f"'{profile}' is not a host certificate profile "
                                     f"(one of {', '.join(profiles.HOST_PROFILES)})")


def _refuse_engine_request(csr: x509.CertificateSigningRequest) -> None:
    """A CSR naming the engine or asking for its usage is an attempt to become it."""
    claimed = [attribute.value for attribute in csr.subject
               if isinstance(attribute.value, str)
               and (attribute.value.lower() == ENGINE_COMMON_NAME
                    or (attribute.oid == NameOID.ORGANIZATIONAL_UNIT_NAME
                        and attribute.value.lower() == profiles.ENGINE))]
    try:
        requested = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if _ENGINE_CLIENT in requested:
            claimed.append("the engine's extended key usage")
    except x509.ExtensionNotFound:
        pass
    if claimed:
        raise InvalidSpec("csr", f"asks for the engine's identity ({', '.join(map(str, claimed))}); "
                                 "a host certificate never carries it")


def _sign_host(pki: Path, public_key, name: str, addresses: list[str], profile: str) -> bytes:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidSpec("name", f"{name!r} is not a host name (1-64 letters, digits, "
                                  "'.', '_' or '-')")
    for claimed in (name, *addresses):
        if str(claimed).lower() == ENGINE_COMMON_NAME:
            raise InvalidSpec("name" if claimed == name else "addresses",
                              f"'{claimed}' is the engine's own name; no host may have it")
    with _locked(pki):
        return _sign(pki, public_key, name, addresses, profile)


def _subject(profile: str, name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, profiles.ORGANIZATION),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, profile),
                      x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _sign(pki: Path, public_key, name: str, addresses: list[str], profile: str,
          record_as: str | None = None) -> bytes:
    """Sign and record a certificate; the caller holds the PKI lock."""
    san = _subject_alt_names(name, addresses)
    ca_cert, ca_key = _load_ca(pki)
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(profile, name))
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
        .add_extension(x509.ExtendedKeyUsage(USAGES[profile]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _record(pki, cert, record_as or name, profile)
    return cert.public_bytes(serialization.Encoding.PEM)


# -- the index of issued certificates and the CRL -------------------------------------------


@contextmanager
def _locked(pki: Path) -> Iterator[None]:
    """One signer at a time: the role enrolls several hosts in parallel."""
    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(pki / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_index(pki: Path) -> dict:
    try:
        index = json.loads((pki / INDEX).read_text())
    except FileNotFoundError:
        return {"crl_number": 0, "certificates": {}}
    except ValueError as exc:
        raise KestrelError(f"{pki / INDEX} is not valid JSON ({exc}); restore it from "
                           "backup", pki_dir=str(pki)) from None
    return index


def _write_index(pki: Path, index: dict) -> None:
    _write(pki / INDEX, json.dumps(index, indent=1, sort_keys=True).encode(), private=True)


def _record(pki: Path, cert: x509.Certificate, name: str, profile: str,
            revoked: str | None = None) -> None:
    index = _read_index(pki)
    now = _now()
    # Expired certificates need no revocation: TLS refuses them anyway.
    index["certificates"] = {
        serial: entry for serial, entry in index["certificates"].items()
        if datetime.datetime.fromisoformat(entry["not_after"]) > now}
    index["certificates"][f"{cert.serial_number:x}"] = {
        "name": name, "profile": profile, "not_after": cert.not_valid_after_utc.isoformat(),
        "revoked": revoked}
    _write_index(pki, index)


def _write_crl(pki: Path) -> None:
    index = _read_index(pki)
    ca_cert, ca_key = _load_ca(pki)
    index["crl_number"] = int(index.get("crl_number", 0)) + 1
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        # A CRL past its next update makes OpenSSL and GnuTLS refuse every peer: a
        # host that missed one push would be cut off. The engine re-issues the CRL
        # whenever it revokes, so it is valid as long as the CA.
        .next_update(ca_cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
    )
    for serial, entry in sorted(index["certificates"].items()):
        if entry.get("revoked"):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(datetime.datetime.fromisoformat(entry["revoked"]))
                .build())
    _write_index(pki, index)
    _write(pki / CRL, builder.sign(ca_key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM))


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
