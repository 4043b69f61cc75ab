"""Turn the engine's domain XML into this host's: resolve the placeholders.

The engine writes host paths as placeholders (see engine_lib.protocol.placeholders).
Here every attribute value and element text that is a placeholder becomes
the real path from the agent config; a file on a storage domain only after
checking that no link on the way leads out of the domain (agent.paths). A
disk on a storage domain with no ``<backingStore>`` gets an empty one: the
engine owns volume chains, so a backing file named in an image header (say
/etc/shadow) is never opened for the guest. Nothing else in the XML is
touched: the engine owns the device model, the agent only fills in the host.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from engine_lib.agent import paths
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


def host_path(value: str, roots: dict[str, str], storage_domains: dict[str, str]) -> str:
    """A placeholder's path on this host; a storage one confined to its domain."""
    path = placeholders.resolve(value, roots, storage_domains)
    ph = placeholders.parse(value)
    if ph.kind == "storage":
        paths.confine(storage_domains[ph.domain], ph.relpath, "storage_domain")
    return path


def pin_backing_chains(root: ET.Element, storage_paths: set[str]) -> None:
    """An empty <backingStore/> on each disk whose file is on a storage domain and that
    has none: libvirt then opens no backing file the image header names."""
    disks = [root] if root.tag == "disk" else root.iterfind("devices/disk")
    for disk in disks:
        source = disk.find("source")
        if source is not None and source.get("file") in storage_paths \
                and disk.find("backingStore") is None:
            ET.SubElement(disk, "backingStore")


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
    found: dict[str, list[str]] = {}

    def resolved(value: str) -> str:
        path = host_path(value, roots, storage_domains)
        found.setdefault(placeholders.parse(value).kind, []).append(path)
        return path

    metadata_node = root.find("metadata")
    skip = set(metadata_node.iter()) if metadata_node is not None else set()
    for element in root.iter():
        if element in skip:
            continue
        for attr, value in element.attrib.items():
            if placeholders.is_placeholder(value):
                element.set(attr, resolved(value))
        if element.text and placeholders.is_placeholder(element.text.strip()):
            element.text = resolved(element.text.strip())
    pin_backing_chains(root, set(found.get("storage", [])))
    return HostDomain(uuid=vm_id, name=name, xml=ET.tostring(root, encoding="unicode"),
                      metadata=meta, paths=found)


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
