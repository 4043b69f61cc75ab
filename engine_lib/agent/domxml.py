"""Turn the engine's domain XML into this host's: resolve the placeholders.

The engine writes host paths as placeholders (see engine_lib.protocol.placeholders).
Here every attribute value and element text that is a placeholder becomes
the real path from the agent config. Nothing else in the XML is touched:
the engine owns the device model, the agent only fills in the host.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from engine_lib.agent import payload
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import InvalidSpec

# Serialize our metadata with its usual prefix rather than ET's "ns0".
ET.register_namespace(metadata.PREFIX, metadata.NAMESPACE)


@dataclass
class HostDomain:
    """The engine's domain, made concrete for this host."""

    uuid: str
    name: str
    xml: str
    metadata: metadata.VmMetadata
    # Resolved paths by placeholder kind, e.g. {"console": ["/var/log/kestrel/console/<id>.log"]}.
    paths: dict[str, list[str]] = field(default_factory=dict)
    # The cloud-init files, taken out of the XML: libvirt's read-only socket shows metadata.
    payload: payload.Payload | None = None


def parse_domain(xml: str) -> ET.Element:
    """Parse domain XML; InvalidSpec("xml", ...) if it is not a <domain> document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InvalidSpec("xml", f"not well-formed XML ({exc})") from None
    if root.tag != "domain":
        raise InvalidSpec("xml", f"root element is <{root.tag}>, expected <domain>")
    return root


def domain_uuid(root: ET.Element) -> str:
    """The VM id: the engine sets the domain UUID to it, so it is mandatory."""
    text = (root.findtext("uuid") or "").strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidSpec("xml", f"<uuid> '{text}' is not a UUID; "
                                 "the engine must set it to the VM id") from None


def resolve(xml: str, roots: dict[str, str], storage_domains: dict[str, str]) -> HostDomain:
    """Resolve every placeholder in ``xml`` for a host with these roots and domains.

    Raises InvalidSpec for malformed XML, a malformed placeholder, or a storage
    domain this host does not have; the message names the offending value.
    """
    root = parse_domain(xml)
    vm_id = domain_uuid(root)
    name = (root.findtext("name") or "").strip()
    if not name:
        raise InvalidSpec("xml", "the domain has no <name>")
    meta = metadata.read(root)
    seed = payload.take(root)
    found: dict[str, list[str]] = {}

    def host_path(value: str) -> str:
        ph = placeholders.parse(value)
        path = placeholders.resolve(value, roots, storage_domains)
        found.setdefault(ph.kind, []).append(path)
        return path

    metadata_node = root.find("metadata")
    skip = set(metadata_node.iter()) if metadata_node is not None else set()
    for element in root.iter():
        if element in skip:
            continue
        for attr, value in element.attrib.items():
            if placeholders.is_placeholder(value):
                element.set(attr, host_path(value))
        if element.text and placeholders.is_placeholder(element.text.strip()):
            element.text = host_path(element.text.strip())
    return HostDomain(uuid=vm_id, name=name, xml=ET.tostring(root, encoding="unicode"),
                      metadata=meta, paths=found, payload=seed)


def disk_sources(xml: str) -> set[str]:
    """Files a domain's disks use (``<disk><source file=...>``): what must not be deleted."""
    root = parse_domain(xml)
    return {src.get("file") for src in root.iterfind("devices/disk/source")
            if src.get("file")}


def console_log_path(xml: str) -> str | None:
    """Where the domain logs its serial console, if it does."""
    root = parse_domain(xml)
    for path in ("devices/serial/log", "devices/console/log"):
        node = root.find(path)
        if node is not None and node.get("file"):
            return node.get("file")
    return None
