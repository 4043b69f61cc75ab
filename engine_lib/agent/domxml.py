"""Turn the engine's domain XML into this host's: resolve the placeholders.

The engine writes host paths as placeholders (see engine_lib.protocol.placeholders).
Here every attribute value and element text that is a placeholder becomes
the real path from the agent config; a file on a storage domain only after
checking that no link on the way leads out of the domain (agent.paths). The
engine owns volume chains: a disk's nested ``<backingStore>`` elements must
name exactly the chain its metadata lists (each a volume placeholder on the
disk's own domain), and the innermost one is always empty, so a backing file
named in an image header (say /etc/shadow) is never opened for the guest. Nothing else in the XML is
touched: the engine owns the device model, the agent only fills in the host.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine_lib.agent import paths, payload
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.protocol.metadata import VolumeRef

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


# Where libvirt opens a host path for the guest (attributes of <source> and <log>, the text
# of <os> children), and the placeholder kinds that may fill each: a path there must come
# from a placeholder this agent resolved, and a kernel is never another VM's console log.
_PATH_ATTRS = {"source": {"file": ("storage", "payload"), "dev": ("lun",), "dir": ("storage",),
                          "path": ("channels",)},
               "log": {"file": ("console",)}}
_PATH_TEXT = {"kernel": ("storage",), "initrd": ("storage",), "dtb": ("storage",),
              "loader": ("storage",), "nvram": ("nvram",)}
# The entropy sources a VM spec can name (engine_lib.spec.RNG_SOURCES).
_RNG_DEVICES = ("/dev/urandom", "/dev/random", "/dev/hwrng")
# Disk image directories are named by UUIDs; no file outside a VM's own volumes is there.
_IMAGE_DIR = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


def pin_backing_chains(root: ET.Element, storage_paths: set[str]) -> None:
    """An empty <backingStore/> at the bottom of each disk whose file is on a storage
    domain: libvirt then opens no backing file an image header names."""
    disks = [root] if root.tag == "disk" else root.iterfind("devices/disk")
    for disk in disks:
        source = disk.find("source")
        if source is None or source.get("file") not in storage_paths:
            continue
        node = disk
        while (store := node.find("backingStore")) is not None and len(store):
            node = store
        if store is None:
            ET.SubElement(node, "backingStore")


def check_backing_chains(top: ET.Element, volumes: dict[tuple[str, str], VolumeRef]) -> None:
    """Every <backingStore> with content must be the chain the metadata lists for the
    disk's volume: type file, a <format> and a volume placeholder <source> on the
    disk's own domain, nothing else. Checked on placeholders, before resolution."""
    disks = [top] if top.tag == "disk" else top.iterfind("devices/disk")
    for disk in disks:
        source = disk.find("source")
        value = (source.get("file") or "") if source is not None else ""
        ph = placeholders.parse(value) if placeholders.is_placeholder(value) else None
        ref = volumes.get((ph.domain, ph.relpath)) if ph and ph.kind == "storage" else None
        store = disk.find("backingStore")
        if ref is None:
            if store is not None and not _empty(store):
                raise InvalidSpec("xml", f"<disk> '{value}': a backing chain belongs only to "
                                         "a volume the metadata lists")
            continue
        while store is not None and not _empty(store):
            ref = _backing_step(store, ref, volumes)
            store = store.find("backingStore")
        if ref.parent:  # an overlay without its backing would read as blank
            raise InvalidSpec("xml", f"volume {ref.relpath}: the chain ends before its "
                                     f"backing volume {ref.parent}")


def _empty(store: ET.Element) -> bool:
    return not len(store) and not store.attrib and not (store.text or "").strip()


def _backing_step(store: ET.Element, ref: VolumeRef,
                  volumes: dict[tuple[str, str], VolumeRef]) -> VolumeRef:
    """Check one <backingStore> under ``ref``'s volume; return its volume's ref."""
    where = f"<backingStore> of volume {ref.relpath}"
    tags = [child.tag for child in store]
    if store.attrib != {"type": "file"} or sorted(tags) not in (
            ["format", "source"], ["backingStore", "format", "source"]):
        raise InvalidSpec("xml", f"{where}: only type='file' with <format>, <source file> "
                                 "and a nested <backingStore> belong here")
    fmt, source = store.find("format"), store.find("source")
    value = source.get("file", "")
    if len(fmt) or len(source) or set(fmt.attrib) != {"type"} or set(source.attrib) != {"file"}:
        raise InvalidSpec("xml", f"{where}: <format type> and <source file> take nothing else")
    if not placeholders.is_placeholder(value):
        raise InvalidSpec("xml", f"{where}: '{value}' is a host path the engine did not "
                                 "write as a placeholder")
    ph = placeholders.parse(value)
    if ph.kind != "storage" or ph.domain != ref.domain:
        raise InvalidSpec("xml", f"{where}: '{value}' is not a volume on storage domain "
                                 f"'{ref.domain}'; a chain stays on its disk's domain")
    below = volumes.get((ph.domain, ph.relpath))
    if below is None or ph.relpath != ref.parent or fmt.get("type") != ref.parent_format:
        raise InvalidSpec("xml", f"{where}: '{value}' ({fmt.get('type')}) is not its backing "
                                 f"volume in the metadata ({ref.parent or 'none'} "
                                 f"{ref.parent_format})")
    return below


def resolve(xml: str, roots: dict[str, str], storage_domains: dict[str, str]) -> HostDomain:
    """Resolve every placeholder in ``xml`` for a host with these roots and domains.

    Raises InvalidSpec for malformed XML, a malformed placeholder, a storage
    domain or LUN this host cannot use, a file that leads out of its storage
    domain, or a host path the engine did not write as a placeholder; the
    message names the offending value.
    """
    root = parse_domain(xml)
    vm_id = domain_uuid(root)
    name = (root.findtext("name") or "").strip()
    if not name:
        raise InvalidSpec("xml", "the domain has no <name>")
    meta = metadata.read(root)
    seed = payload.take(root)
    metadata_node = root.find("metadata")
    skip = set(metadata_node.iter()) if metadata_node is not None else set()
    found = resolve_paths(root, roots, storage_domains, meta.luns, meta.volumes, skip)
    pin_backing_chains(root, set(found.get("storage", [])))
    return HostDomain(uuid=vm_id, name=name, xml=ET.tostring(root, encoding="unicode"),
                      metadata=meta, paths=found, payload=seed)


def resolve_paths(top: ET.Element, roots: dict[str, str], storage_domains: dict[str, str],
                  luns: dict[str, str], volumes: Iterable[VolumeRef],
                  skip: set[ET.Element] | frozenset = frozenset()) -> dict[str, list[str]]:
    """Resolve the placeholders of ``top`` (a domain or one device) in place.

    ``luns`` are the registered LUNs the engine sent, ``volumes`` the VM's own
    volumes and their backing chains (check_backing_chains). Returns the
    resolved paths by kind.
    """
    found: dict[str, list[str]] = {}
    refs = {(v.domain, v.relpath): v for v in volumes}
    check_backing_chains(top, refs)

    def host_path(value: str) -> str:
        ph = placeholders.parse(value)
        path = placeholders.resolve(value, roots, storage_domains, luns)
        if ph.kind == "lun":
            paths.block_device(path, f"lun '{ph.relpath}'")
        elif ph.kind == "storage":
            if (ph.domain, ph.relpath) not in refs and \
                    _IMAGE_DIR.match(ph.relpath.split("/", 1)[0]):
                raise InvalidSpec("xml", f"{value} is inside a disk image directory but is "
                                         "not one of this VM's volumes")
            paths.confine(storage_domains[ph.domain], ph.relpath, "storage_domain")
        found.setdefault(ph.kind, []).append(path)
        return path

    for element in top.iter():
        if element in skip:
            continue
        for attr, value in element.attrib.items():
            kinds = _PATH_ATTRS.get(element.tag, {}).get(attr)
            if kinds:
                element.set(attr, _path_site(f"<{element.tag} {attr}>", value, kinds,
                                             host_path))
            elif placeholders.is_placeholder(value.strip()):
                raise InvalidSpec("xml", f"<{element.tag} {attr}='{value}'>: a placeholder "
                                         "where no host path belongs")
        text = (element.text or "").strip()
        if element.tag in _PATH_TEXT:
            if text:
                element.text = _path_site(f"<{element.tag}>", text, _PATH_TEXT[element.tag],
                                          host_path)
        elif placeholders.is_placeholder(text):
            raise InvalidSpec("xml", f"<{element.tag}>{text}: a placeholder where no host "
                                     "path belongs")
        if element.tag == "backend" and element.get("model") == "random" and \
                text not in _RNG_DEVICES:
            raise InvalidSpec("xml", f"<backend model='random'>{text}: not one of "
                                     f"{', '.join(_RNG_DEVICES)}")
    return found


def _path_site(where: str, value: str, kinds: tuple[str, ...], host_path) -> str:
    """A host path position: only a placeholder of a fitting kind may fill it (defense in
    depth behind the engine's own checks: no spec string can name a host file or device)."""
    if not placeholders.is_placeholder(value):
        raise InvalidSpec("xml", f"{where} '{value}': a host path the engine did not "
                                 "write as a placeholder")
    if placeholders.parse(value).kind not in kinds:
        raise InvalidSpec("xml", f"{where} '{value}': only a {' or '.join(kinds)} "
                                 "placeholder belongs here")
    return str(host_path(value))


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
