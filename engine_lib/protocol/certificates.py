"""The engine CA's certificate profiles, and how an agent recognises the engine.

Every certificate the engine CA signs has one profile, visible in its subject
(``O=kestrel, OU=<profile>, CN=<name>``) and its extended key usage:

    engine      CN=kestrel-engine; clientAuth + ENGINE_CLIENT_OID. Only
                ``kestrel engine init`` issues it; signing refuses it to hosts.
    agent       a host's agent: serverAuth only (it never acts as a client).
    libvirt     a host's libvirtd for qemu+tls: serverAuth + clientAuth; root-only key.
    migration   a host's QEMU migration stream: serverAuth + clientAuth; its key is
                readable by QEMU's group, so nothing else accepts this profile.
    api         the engine's REST API (``kestrel engine serve``): serverAuth only,
                SANs = the addresses clients reach it at. Never a client: an agent
                refuses it like any certificate but the engine's.

Agents admit only the engine profile; libvirtd admits only libvirt clients
(``tls_allowed_dn_list``). Standard library only: the agent checks its peer
from the DER certificate without any X.509 library.
"""

from __future__ import annotations

from typing import Any

ORGANIZATION = "kestrel"
ENGINE = "engine"
AGENT = "agent"
LIBVIRT = "libvirt"
MIGRATION = "migration"
API = "api"
HOST_PROFILES = (AGENT, LIBVIRT, MIGRATION)

ENGINE_NAME = "kestrel-engine"
# A UUID-based OID (ITU-T X.667, arc 2.25): ours without registering anything.
ENGINE_CLIENT_OID = "2.25.8745259940099891014402190788427759455"
_EXTENDED_KEY_USAGE = "2.5.29.37"
_SHORT = {"organizationName": "O", "organizationalUnitName": "OU", "commonName": "CN"}

# libvirtd.conf tls_allowed_dn_list (the host role writes it): libvirt matches the
# subject as GnuTLS prints it, in the certificate's order (O, OU, CN).
LIBVIRT_ALLOWED_DN = f"O={ORGANIZATION},OU={LIBVIRT},CN=*"


def engine_client_refusal(peer: dict[str, Any] | None, der: bytes | None) -> str | None:
    """Why a TLS peer is not the engine, or None when it is.

    ``peer`` is ``SSLSocket.getpeercert()`` (already verified against the CA and
    the CRL), ``der`` the same certificate in binary form. The engine is the one
    certificate with subject O=kestrel, OU=engine, CN=kestrel-engine and the
    engine's extended key usage; host certificates from the same CA have neither.
    """
    if not peer or not der:
        return "no client certificate"
    subject = [item for rdn in peer.get("subject", ()) for item in rdn]
    expected = [("organizationName", ORGANIZATION), ("organizationalUnitName", ENGINE),
                ("commonName", ENGINE_NAME)]
    if subject != expected:
        shown = ", ".join(f"{_SHORT.get(key, key)}={value}" for key, value in subject) or "empty"
        return f"subject {shown} is not the engine's (O={ORGANIZATION}, OU={ENGINE}, " \
               f"CN={ENGINE_NAME})"
    try:
        usages = extended_key_usages(der)
    except ValueError as exc:
        return f"unreadable certificate ({exc})"
    if ENGINE_CLIENT_OID not in usages:
        return "its extended key usage lacks the engine's"
    return None


def extended_key_usages(der: bytes) -> list[str]:
    """The extended key usage OIDs of a DER certificate ([] when it has none).

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version, serial,
    signature, issuer, validity, subject, spki, [1]?, [2]?, [3] extensions } ... }
    """
    tag, start, end = _tlv(der, 0)
    tag, start, end = _tlv(der, start)  # tbsCertificate
    _expect(tag, 0x30, "tbsCertificate")
    position = start
    while position < end:
        tag, inner, after = _tlv(der, position)
        if tag == 0xA3:  # [3] EXPLICIT Extensions
            _, ext_pos, ext_end = _tlv(der, inner)
            while ext_pos < ext_end:
                _, field, ext_after = _tlv(der, ext_pos)
                oid_tag, oid_start, oid_end = _tlv(der, field)
                _expect(oid_tag, 0x06, "extension id")
                if _oid(der[oid_start:oid_end]) == _EXTENDED_KEY_USAGE:
                    value_tag, value_start, value_end = _tlv(der, oid_end)
                    if value_tag == 0x01:  # critical BOOLEAN
                        value_tag, value_start, value_end = _tlv(der, value_end)
                    _expect(value_tag, 0x04, "extension value")
                    seq_tag, item, seq_end = _tlv(der, value_start)
                    _expect(seq_tag, 0x30, "extended key usage")
                    usages = []
                    while item < seq_end:
                        item_tag, item_start, item = _tlv(der, item)
                        _expect(item_tag, 0x06, "key purpose")
                        usages.append(_oid(der[item_start:item]))
                    return usages
                ext_pos = ext_after
        position = after
    return []


def _tlv(data: bytes, position: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``position``."""
    if position + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[position], data[position + 1]
    position += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or position + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[position:position + count], "big")
        position += count
    if position + length > len(data):
        raise ValueError("truncated DER")
    return tag, position, position + length


def _expect(tag: int, wanted: int, what: str) -> None:
    if tag != wanted:
        raise ValueError(f"{what}: DER tag {tag:#x}, expected {wanted:#x}")


def _oid(body: bytes) -> str:
    if not body:
        raise ValueError("empty OID")
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])
