"""The two comparable VMs of make bench-snapshots and the metadata of their chains.

Both run the lab's tiny guest with a qemu-guest-agent channel, started through the
agent, each on a qcow2 volume of the "data" domain made here beforehand: 256 MiB virtual,
the first DATA_MIB of it random data (what a full backup and qemu-img convert copy).
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
import xml.etree.ElementTree as ET

from engine_lib.protocol import metadata, placeholders

DISK_MIB = 256
DATA_MIB = 128
DOMAIN = "data"


def volume(image: str, volume_id: str | None = None) -> dict:
    """A volume dict as the agent's routes take it."""
    return {"domain": DOMAIN, "image": image, "volume": volume_id or str(uuid.uuid4()),
            "format": "qcow2", "size_mib": DISK_MIB}


def make_base(domain_dir: str, seed_file: str) -> dict:
    """A new image whose base volume holds the seed's data; the volume dict."""
    vol = volume(str(uuid.uuid4()))
    os.makedirs(os.path.join(domain_dir, vol["image"]))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", seed_file,
                    os.path.join(domain_dir, vol["image"], vol["volume"])], check=True)
    return vol


def make_seed(path: str) -> None:
    """DATA_MIB of random data, then zeros up to DISK_MIB (sparse)."""
    with open(path, "wb") as out:
        for _ in range(DATA_MIB):
            out.write(os.urandom(1024 * 1024))
        out.truncate(DISK_MIB * 1024 * 1024)


def metadata_xml(alias: str, chain: list[dict]) -> str:
    """The <kestrel:vm> element for a disk reading ``chain`` (top first)."""
    ET.register_namespace(metadata.PREFIX, metadata.NAMESPACE)
    root = ET.Element(f"{{{metadata.NAMESPACE}}}vm")
    ET.SubElement(root, f"{{{metadata.NAMESPACE}}}cluster").text = "bench"
    for depth, vol in enumerate(chain):
        attrs = {"alias": alias if depth == 0 else "", "disk": "root",
                 "domain": vol["domain"], "image": vol["image"], "volume": vol["volume"],
                 "format": vol["format"], "size_mib": str(vol["size_mib"])}
        if depth + 1 < len(chain):
            below = chain[depth + 1]
            attrs.update({"parent": f"{below['image']}/{below['volume']}",
                          "parent-format": below["format"]})
        ET.SubElement(root, f"{{{metadata.NAMESPACE}}}volume", attrs)
    return ET.tostring(root, encoding="unicode")


def domain_xml(vm_id: str, name: str, alias: str, base: dict) -> str:
    """The tiny guest on ``base`` (no backing), with its guest agent's channel."""
    source = placeholders.storage(DOMAIN, f"{base['image']}/{base['volume']}")
    channel = placeholders.channel(vm_id, "org.qemu.guest_agent.0")
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{vm_id}</uuid>
  <metadata>{metadata_xml(alias, [base])}</metadata>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{placeholders.storage('images', 'vmlinuz')}</kernel>
    <initrd>{placeholders.storage('images', 'initrd.img')}</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{source}'/>
      <target dev='vda' bus='virtio'/>
      <alias name='{alias}'/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='{channel}'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>"""


def live_source(dumpxml: str) -> str:
    """vda's current source file in a live domain XML."""
    match = re.search(r"<source file='([^']+)'", dumpxml)
    if match is None:
        raise RuntimeError("the live domain has no disk source")
    return match.group(1)
