"""A disk's backing chain in the engine's XML: exactly what the metadata lists, each
member a volume placeholder on the disk's own domain, the innermost one empty."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from engine_lib.agent import domxml, hotplug
from engine_lib.agent.api import Api
from engine_lib.agent.config import AgentConfig
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.protocol.metadata import VolumeRef
from engine_lib.protocol.wire import API_PREFIX

VM_ID = "6f1d2c9e-8a4b-4c1e-9f7a-0123456789ab"
ROOTS = {kind: f"/var/lib/kestrel/{kind}" for kind in placeholders.KINDS}
DOMAINS = {"data": "/srv/data", "other": "/srv/other"}
TOP = "11111111-1111-4111-8111-111111111111"
MID = "22222222-2222-4222-8222-222222222222"
BASE = "33333333-3333-4333-8333-333333333333"


def _store(path: str, fmt: str, inner: str = "<backingStore/>") -> str:
    return (f"<backingStore type='file'><format type='{fmt}'/><source file='{path}'/>"
            f"{inner}</backingStore>")


CHAIN = _store(placeholders.storage("data", f"{MID}/mid"), "qcow2",
               _store(placeholders.storage("data", f"{BASE}/base"), "raw"))
VOLUMES = (f"<kestrel:volume alias='ua-d1' disk='thin' domain='data' image='{TOP}' volume='top' "
           f"format='qcow2' size_mib='64' parent='{MID}/mid' parent-format='qcow2'/>"
           f"<kestrel:volume alias='' disk='thin' domain='data' image='{MID}' volume='mid' "
           f"format='qcow2' size_mib='64' parent='{BASE}/base' parent-format='raw'/>"
           f"<kestrel:volume alias='' disk='thin' domain='data' image='{BASE}' volume='base' "
           "format='raw' size_mib='64'/>")


def engine_xml(chain: str = CHAIN, volumes: str = VOLUMES) -> str:
    return f"""<domain type='qemu'><name>vm1</name><uuid>{VM_ID}</uuid>
  <metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>{volumes}</kestrel:vm></metadata>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='{placeholders.storage("data", f"{TOP}/top")}'/>{chain}
    <target dev='vda' bus='virtio'/><alias name='ua-d1'/>
  </disk></devices></domain>"""


def _sources(disk: ET.Element) -> list[str]:
    out, node = [], disk
    while (store := node.find("backingStore")) is not None:
        source = store.find("source")
        out.append(source.get("file") if source is not None else "<empty>")
        node = store
    return out


def test_the_listed_chain_is_resolved_and_ends_empty():
    root = ET.fromstring(domxml.resolve(engine_xml(), ROOTS, DOMAINS).xml)
    assert _sources(root.find("devices/disk")) == [
        f"/srv/data/{MID}/mid", f"/srv/data/{BASE}/base", "<empty>"]


def test_a_chain_without_its_innermost_empty_store_gets_one():
    chain = CHAIN.replace("<backingStore/>", "")
    root = ET.fromstring(domxml.resolve(engine_xml(chain), ROOTS, DOMAINS).xml)
    assert _sources(root.find("devices/disk"))[-1] == "<empty>"


@pytest.mark.parametrize("chain, message", [
    # A nested source naming a host file, or escaping the domain.
    (CHAIN.replace(placeholders.storage("data", f"{BASE}/base"), "/etc/shadow"),
     "did not write as a placeholder"),
    (CHAIN.replace(f"{BASE}/base", "../../etc/shadow"), "must be a relative path inside"),
    # A chain to another storage domain, even to a file of the same name.
    (CHAIN.replace("storage/data/" + BASE, "storage/other/" + BASE),
     "stays on its disk.s domain"),
    # Another kind of placeholder in a chain.
    (CHAIN.replace(placeholders.storage("data", f"{BASE}/base"), placeholders.payload(VM_ID)),
     "not a volume on storage domain"),
    # Skipping a level, stopping early, or another format than the metadata's.
    (_store(placeholders.storage("data", f"{BASE}/base"), "raw"), "not its backing volume"),
    ("", "the chain ends before its backing volume"),
    ("<backingStore/>", "the chain ends before its backing volume"),
    (CHAIN.replace("type='raw'", "type='qcow2'"), "not its backing volume"),
    # Anything else in a backingStore.
    (CHAIN.replace("<format type='raw'/>", "<format type='raw'/><foo/>"), "only type='file'"),
    (CHAIN.replace("type='file'", "type='block'", 1), "only type='file'"),
    (CHAIN.replace("<format type='raw'/>", "<format type='raw' x='1'/>"), "take nothing else"),
    (CHAIN.replace("<backingStore/>", "<backingStore type='file'/>"), "only type='file'"),
])
def test_anything_but_the_listed_chain_is_refused(chain, message):
    with pytest.raises(InvalidSpec, match=message):
        domxml.resolve(engine_xml(chain), ROOTS, DOMAINS)


def test_a_chain_under_a_volume_the_metadata_does_not_list_is_refused():
    volumes = VOLUMES.replace(f"parent='{MID}/mid' parent-format='qcow2'", "")
    with pytest.raises(InvalidSpec, match="not its backing volume in the metadata"):
        domxml.resolve(engine_xml(volumes=volumes), ROOTS, DOMAINS)
    # A backing member the metadata does not list at all.
    unlisted = VOLUMES[:VOLUMES.index(f"<kestrel:volume alias='' disk='thin' domain='data' "
                                      f"image='{BASE}'")]
    with pytest.raises(InvalidSpec, match="not its backing volume in the metadata"):
        domxml.resolve(engine_xml(volumes=unlisted), ROOTS, DOMAINS)


def _ref(image, volume, fmt, parent="", parent_format="", alias=""):
    return VolumeRef(alias, "data", image, volume, fmt, 64, disk="thin",
                     parent=parent, parent_format=parent_format)


def test_hotplug_resolves_a_chain_given_with_the_volume_and_refuses_one_without():
    device = ET.fromstring(engine_xml()).find("devices/disk")
    top = _ref(TOP, "top", "qcow2", f"{MID}/mid", "qcow2", alias="ua-d1")
    chain = [_ref(MID, "mid", "qcow2", f"{BASE}/base", "raw"), _ref(BASE, "base", "raw")]
    xml, used = hotplug.resolve(device, ROOTS, DOMAINS, volume=top, chain=chain)
    assert _sources(ET.fromstring(xml)) == [f"/srv/data/{MID}/mid", f"/srv/data/{BASE}/base",
                                            "<empty>"]
    device = ET.fromstring(engine_xml()).find("devices/disk")
    with pytest.raises(InvalidSpec, match="not its backing volume in the metadata"):
        hotplug.resolve(device, ROOTS, DOMAINS, volume=top)


class _HypervisorRecorder:
    """The agent's hypervisor (agent.vms) as the plug route calls it."""

    def __init__(self, config):
        self.calls = []

    def plug_device(self, vm_id, xml, volume=None, luns=None, chain=None):
        self.calls.append((volume, chain))
        return {"id": vm_id}


def test_the_plug_route_reads_the_volume_s_parent_and_its_chain(tmp_path):
    config = AgentConfig(name="a", address="127.0.0.1", port=0, libvirt_uri="test:///default",
                         ca="", cert="", key="", source="test")
    api = Api(config, hypervisor_factory=_HypervisorRecorder)
    top = {"alias": "ua-d1", "domain": "data", "image": TOP, "volume": "top", "format": "qcow2",
           "size_mib": 64, "create": True, "parent": f"{BASE}/base", "parent_format": "raw"}
    base = {"domain": "data", "image": BASE, "volume": "base", "format": "raw", "alias": "ua-x",
            "create": True}
    path = f"{API_PREFIX}/vms/{VM_ID}/devices"
    status, _ = api.handle("POST", path, {}, json.dumps(
        {"xml": "<disk/>", "volume": top, "chain": [base]}).encode())
    assert status == 200
    [(volume, chain)] = api.hypervisor.calls
    assert (volume.parent, volume.parent_format, volume.create) == (f"{BASE}/base", "raw", True)
    # A chain member is never created and is no device, whatever the request says.
    assert [(c.relpath, c.alias, c.create) for c in chain] == [(f"{BASE}/base", "", False)]
    status, body = api.handle("POST", path, {}, json.dumps(
        {"xml": "<disk/>", "chain": [base]}).encode())
    assert status == 400 and body["error"]["details"]["field"] == "chain"
