"""Live snapshots on the agent: request validation, the overlays (real qemu-img), and the
sequence around libvirt (a stand-in domain): failures clean up and say why.

The same against real libvirt and QEMU is tests/system/test_agent_snapshots.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import libvirt
import pytest

from engine_lib.agent import snapshot_request, snapshots, volumes
from engine_lib.agent.api import Api
from engine_lib.agent.registry import Registry
from engine_lib.agent.states import VmStatus
from engine_lib.protocol import metadata
from engine_lib.protocol.errors import Conflict, LibvirtError

VM = "6a1d2d9e-0b7e-4a57-9d54-5b1c6c1f0a01"
SNAP = "0b6f5f0c-9d0e-4f59-8a43-3a8f3c1d2e11"
ALIAS = "ua-0c1e9b4a-7a43-4f36-8d5e-1b2a3c4d5e6f"


def vol(volume, image="img", domain="data", **extra):
    return {"domain": domain, "image": image, "volume": volume, "format": "qcow2", **extra}


def meta(top="new", parent="top", parent_format="qcow2", alias=ALIAS):
    return (f"<kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'>"
            f"<kestrel:volume alias='{alias}' domain='data' image='img' volume='{top}' "
            f"format='qcow2' size_mib='64' parent='img/{parent}' "
            f"parent-format='{parent_format}'/>"
            f"<kestrel:volume domain='data' image='img' volume='{parent}' format='qcow2' "
            f"size_mib='64'/></kestrel:vm>")


def body(**changes):
    request = {"snapshot": SNAP, "quiesce": True, "memory_volume": None,
               "disks": [{"alias": ALIAS, "volume": vol("new", size_mib=64),
                          "parent": vol("top")}],
               "metadata": meta()}
    return {**request, **changes}


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args)) or {"ok": True}


@pytest.fixture
def api():
    hv = Recorder()
    api = Api(config=None, hypervisor_factory=lambda _config: hv)
    api.calls = hv.calls
    return api


def call(api, method, path, document=None):
    return api.handle(method, "/api/v1" + path, {},
                      json.dumps(document).encode() if document is not None else b"")


def test_good_requests_reach_the_hypervisor_parsed(api):
    assert call(api, "POST", f"/vms/{VM}/snapshots", body())[0] == 200
    assert call(api, "POST", "/volumes/overlay", {"volume": vol("n"), "parent": vol("t")})[0] \
        == 200
    assert call(api, "GET", f"/vms/{VM}/chains")[0] == 200
    (_, vm_id, request), (_, overlay), chains = api.calls
    assert (vm_id, request.snapshot, request.quiesce, request.memory) == (VM, SNAP, True, None)
    [disk] = request.disks
    assert (disk.alias, disk.volume.volume, disk.parent.relpath, disk.size_mib) == \
        (ALIAS, "new", "img/top", 64)
    assert (overlay.volume.volume, overlay.parent.volume, overlay.alias) == ("n", "t", "")
    assert chains == ("chains", VM)


BAD = [
    ({"snapshot": "s1"}, "snapshot"),
    ({"disks": []}, "disks"),
    ({"disks": [{"alias": ALIAS, "volume": vol("new")}]}, "disks[0].parent"),
    ({"disks": [{"alias": "vda", "volume": vol("new"), "parent": vol("top")}]},
     "disks[0].alias"),
    ({"disks": [{"alias": ALIAS, "volume": vol("new", format="raw"), "parent": vol("top")}]},
     "disks[0].volume.format"),
    ({"disks": [{"alias": ALIAS, "volume": vol("new"), "parent": vol("top", format="vmdk")}]},
     "disks[0].parent.format"),
    ({"disks": [{"alias": ALIAS, "volume": vol("new"), "parent": vol("top", domain="d2")}]},
     "disks[0].parent.domain"),
    ({"disks": [{"alias": ALIAS, "volume": vol("../x"), "parent": vol("top")}]},
     "disks[0].volume.volume"),
    ({"disks": [{"alias": ALIAS, "volume": vol("new", size_mib=-1), "parent": vol("top")}]},
     "disks[0].volume.size_mib"),
    ({"disks": [{"alias": ALIAS, "volume": vol("top"), "parent": vol("top")}]},
     "disks[0].volume"),
    ({"disks": [{"alias": ALIAS, "volume": vol("n1"), "parent": vol("top")},
                {"alias": ALIAS, "volume": vol("n2"), "parent": vol("t2")}]}, "disks[1].alias"),
    ({"memory_volume": {"domain": "data", "image": "m"}}, "memory_volume.volume"),
    ({"quiesce": "yes"}, "quiesce"),
    ({"metadata": ""}, "metadata"),
    ({"metadata": "<vm>"}, "metadata"),
    ({"metadata": "<vm/>"}, "metadata"),
    ({"metadata": meta(parent="other")}, "metadata"),
    ({"metadata": meta(parent_format="raw")}, "metadata"),
    ({"metadata": meta(alias="ua-other")}, "metadata"),
]


@pytest.mark.parametrize("change, field", BAD)
def test_bad_snapshot_requests_name_the_field_and_change_nothing(api, change, field):
    status, doc = call(api, "POST", f"/vms/{VM}/snapshots", body(**change))
    assert status == 400 and api.calls == []
    assert doc["error"]["details"]["field"] == field


@pytest.mark.parametrize("document, field", [
    ({"volume": vol("n")}, "parent"),
    ({"volume": vol("n"), "parent": vol("t", domain="other")}, "parent.domain"),
    ({"volume": vol("n", color="red"), "parent": vol("t")}, "volume"),
])
def test_bad_overlay_requests_name_the_field(api, document, field):
    status, doc = call(api, "POST", "/volumes/overlay", document)
    assert status == 400 and api.calls == []
    assert doc["error"]["details"]["field"] == field


def test_keep_memory_only_with_a_restore(api):
    status, doc = call(api, "POST", "/vms", {"xml": "<domain/>", "keep_memory": True})
    assert status == 400 and doc["error"]["details"]["field"] == "keep_memory"


# -- overlays with the real qemu-img ------------------------------------------------------


@pytest.fixture
def domains(tmp_path):
    (tmp_path / "img").mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "img" / "top"),
                    "96M"], check=True)
    return {"data": str(tmp_path)}


def loc(volume, image="img"):
    return volumes.VolumeLocation("data", image, volume)


def test_an_overlay_is_made_relative_and_never_over_a_file_or_on_a_missing_parent(domains):
    path = volumes.create_overlay(loc("new"), loc("top"), "qcow2", 64, domains)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", path],
                                     capture_output=True, check=True, text=True).stdout)
    assert info["backing-filename"] == "../img/top" and info["virtual-size"] == 96 << 20
    with pytest.raises(Conflict, match="already exists"):
        volumes.create_overlay(loc("new"), loc("top"), "qcow2", 64, domains)
    with pytest.raises(Conflict, match="missing"):
        volumes.create_overlay(loc("other"), loc("gone"), "qcow2", 64, domains)
    assert not loc("other").exists(domains)


# -- the sequence around libvirt, with a stand-in domain -------------------------------------


def live_xml(source):
    return (f"<domain><uuid>{VM}</uuid><devices>"
            f"<disk type='file' device='disk'><source file='{source}'/>"
            f"<backingStore type='file'><format type='qcow2'/>"
            f"<source file='{source}.base'/><backingStore/></backingStore>"
            f"<target dev='vda'/><alias name='{ALIAS}'/></disk>"
            f"<disk type='file' device='cdrom'><target dev='sdc'/><readonly/></disk>"
            f"</devices></domain>")


class Domain:
    """What snapshots.create asks of a libvirt domain; ``refuse`` lists failures to raise."""

    def __init__(self, source, refuse=()):
        self.source, self.refuse = source, list(refuse)
        self.snapshots, self.metadata = [], []

    def UUIDString(self):
        return VM

    def isActive(self):
        return True

    def isPersistent(self):
        return False

    def XMLDesc(self, _flags=0):
        return live_xml(self.source)

    def snapshotCreateXML(self, xml, flags):
        self.snapshots.append((xml, flags))
        if self.refuse:
            message = self.refuse.pop(0)
            error = libvirt.libvirtError(message)
            error.err = (1, 0, message, 0, None, None, None, 0, 0)
            raise error

    def setMetadata(self, kind, text, key, uri, flags):
        self.metadata.append((text, key, uri, flags))

    def blockJobInfo(self, dev, _flags):
        return {"type": libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT, "cur": 5, "end": 10}


def hypervisor(dom, domains, status=VmStatus.UP):
    registry = Registry()
    registry.set(VM, "vm1", status)
    return SimpleNamespace(config=SimpleNamespace(storage_domains=domains), registry=registry,
                           lookup=lambda _id: dom, vm_lock=lambda _id: contextlib.nullcontext())


def request(domains, memory=None):
    return snapshot_request.parse(body(memory_volume=memory))


def test_a_snapshot_makes_the_overlay_switches_atomically_and_sets_the_metadata(domains):
    dom = Domain(loc("top").path(domains))
    answer = snapshots.create(hypervisor(dom, domains), VM, request(domains))
    assert answer == {"quiesced": True, "memory": False,
                      "disks": [{"alias": ALIAS, "volume": "new"}]}
    [(xml, flags)] = dom.snapshots
    want = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)
    assert flags == want
    disks = {d.get("name"): d for d in ET.fromstring(xml).iterfind("disks/disk")}
    assert disks["sdc"].get("snapshot") == "no"  # a cdrom is never snapshotted
    assert disks["vda"].find("source").get("file") == loc("new").path(domains)
    [(text, key, uri, flags)] = dom.metadata
    assert (key, uri, flags) == (metadata.PREFIX, metadata.NAMESPACE,
                                 libvirt.VIR_DOMAIN_AFFECT_LIVE)
    # As libvirt takes it: no namespace of its own (libvirt adds key and URI).
    assert text.startswith("<vm><volume alias=") and "xmlns" not in text


def test_no_guest_agent_means_an_unquiesced_snapshot_said_so(domains):
    dom = Domain(loc("top").path(domains), refuse=["guest agent is not responding"])
    answer = snapshots.create(hypervisor(dom, domains), VM, request(domains))
    assert answer["quiesced"] is False and len(dom.snapshots) == 2
    assert not dom.snapshots[1][1] & libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE


def test_a_failed_snapshot_removes_what_it_made_and_says_why_and_where(domains):
    dom = Domain(loc("top").path(domains), refuse=["operation failed: No space left on device"])
    memory = {"domain": "data", "image": "mem", "volume": "m1"}
    with pytest.raises(LibvirtError) as failed:
        snapshots.create(hypervisor(dom, domains), VM, request(domains, memory))
    assert "storage domain 'data'" in failed.value.message
    assert "No space left on device" in failed.value.message
    assert "the VM runs on its previous chain" in failed.value.message
    assert not loc("new").exists(domains) and not loc("m1", "mem").exists(domains)
    # With memory: never quiesced, and not disk-only.
    assert len(dom.snapshots) == 1 and dom.snapshots[0][1] & (
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY) == 0
    assert dom.metadata == []


def test_a_stale_top_or_a_migrating_vm_is_refused_before_anything_is_made(domains):
    dom = Domain(loc("elsewhere").path(domains))
    with pytest.raises(Conflict, match="chain changed"):
        snapshots.create(hypervisor(dom, domains), VM, request(domains))
    dom = Domain(loc("top").path(domains))
    with pytest.raises(Conflict, match="MigratingFrom"):
        snapshots.create(hypervisor(dom, domains, VmStatus.MIGRATING_FROM), VM,
                         request(domains))
    assert dom.snapshots == [] and not loc("new").exists(domains)


def test_chains_lists_each_disk_top_first_with_its_block_job(domains):
    dom = Domain(loc("top").path(domains))
    assert snapshots.chains(hypervisor(dom, domains), VM) == {"disks": [{
        "alias": ALIAS, "target": "vda", "chain": ["img/top", loc("top").path(domains)
                                                   + ".base"],
        "block_job": {"type": "active_commit", "cur": 5, "end": 10, "ready": False}}]}
