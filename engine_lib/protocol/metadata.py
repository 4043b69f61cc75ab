"""The engine's data for the host, carried in the domain's <metadata>.

libvirt has no element for what the agent needs to prepare a host (which
storage volume backs which disk, how big to create it, the cloud-init payload),
so the engine writes it under our own namespace and the agent reads it back.
A volume carries ``create="yes"`` only until the engine has seen its disk in a
running domain: a volume missing after that is lost data, never a blank to make.

    <metadata>
      <kestrel:vm xmlns:kestrel="https://kestrel.virt/xmlns/vm/1">
        <kestrel:cluster>default</kestrel:cluster>
        <kestrel:volume alias="ua-..." disk="root" domain="data" image="<uuid>"
                        volume="<uuid>" format="qcow2" size_mib="64" create="yes"/>
        <kestrel:volume alias="ua-..." disk="thin" domain="data" image="<uuid>"
                        volume="<uuid>" format="qcow2" size_mib="64"
                        parent="<image>/<volume>" parent-format="raw"/>
        <kestrel:volume alias="" disk="thin" domain="data" image="<image>"
                        volume="<volume>" format="raw" size_mib="64"/>
        <kestrel:custom name="key">value</kestrel:custom>
        <kestrel:lun name="db" path="/dev/disk/by-id/wwn-0x..."/>
      </kestrel:vm>
    </metadata>

A disk whose volume is an overlay names its backing volume (``parent``, on the
same domain) and that volume's format; each volume of the chain below it is
listed too, with an empty alias (it is no device, only a file the disk reads),
so the agent checks the whole chain the domain XML renders against this list.

Shared by engine and agent; standard library only.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

NAMESPACE = "https://kestrel.virt/xmlns/vm/1"
PREFIX = "kestrel"
_NS = {PREFIX: NAMESPACE}


@dataclass(frozen=True)
class VolumeRef:
    alias: str
    domain: str
    image: str
    volume: str
    format: str
    size_mib: int
    # The user's name for the disk (for messages) and whether the agent may create
    # the volume when its file is missing: only before the disk's first start.
    disk: str = ""
    create: bool = False
    # The backing volume (``<image>/<volume>`` on the same domain) and its format;
    # empty for a volume with none. Chain members other than a disk's own volume
    # carry an empty alias.
    parent: str = ""
    parent_format: str = ""

    @property
    def relpath(self) -> str:
        """Location of the volume inside its storage domain."""
        return f"{self.image}/{self.volume}"


@dataclass
class VmMetadata:
    cluster: str = ""
    volumes: list[VolumeRef] = field(default_factory=list)
    custom_properties: dict[str, str] = field(default_factory=dict)
    # Registered LUNs the VM uses: name -> device path (engine_lib.services.luns).
    luns: dict[str, str] = field(default_factory=dict)


def carried(domain: ET.Element) -> bool:
    """Whether a parsed <domain> carries our metadata (the engine defined it)."""
    return domain.find(f"metadata/{PREFIX}:vm", _NS) is not None


def read(domain: ET.Element) -> VmMetadata:
    """Read our metadata from a parsed <domain> element (absent: empty)."""
    meta = VmMetadata()
    node = domain.find(f"metadata/{PREFIX}:vm", _NS)
    if node is None:
        return meta
    meta.cluster = node.findtext(f"{PREFIX}:cluster", default="", namespaces=_NS)
    for vol in node.findall(f"{PREFIX}:volume", _NS):
        meta.volumes.append(VolumeRef(
            alias=vol.get("alias", ""),
            domain=vol.get("domain", ""),
            image=vol.get("image", ""),
            volume=vol.get("volume", ""),
            format=vol.get("format", "qcow2"),
            size_mib=int(vol.get("size_mib", "0")),
            disk=vol.get("disk", ""),
            create=vol.get("create") == "yes",
            parent=vol.get("parent", ""),
            parent_format=vol.get("parent-format", ""),
        ))
    for prop in node.findall(f"{PREFIX}:custom", _NS):
        meta.custom_properties[prop.get("name", "")] = prop.text or ""
    for lun in node.findall(f"{PREFIX}:lun", _NS):
        meta.luns[lun.get("name", "")] = lun.get("path", "")
    return meta
