"""Live snapshots through the agent, on real libvirtd and QEMU in lab hosts.

One VM's life: a quiesced disk-only snapshot moves its disk onto a new top (live
XML, metadata and GET chains agree); a stale request is refused; a snapshot whose
memory lands on a full storage area fails with libvirt's reason and leaves the VM
on its old chain; the VM migrates with its chain; a memory snapshot, then a
revert: the saved memory restored onto a NEW empty top over the frozen volume
(the engine's XML, not the saved one), with the memory file kept for next time.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from functools import partial

import pytest
from test_agent_hibernation import (
    guest_xml,
    qga,
    read_marker,
    wait_for_guest_agent,
    write_marker,
)

from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import Conflict, LibvirtError
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

ET.register_namespace(metadata.PREFIX, metadata.NAMESPACE)
_NS = {metadata.PREFIX: metadata.NAMESPACE}
MIGRATION_TIMEOUT = 60.0


def with_chain(xml: str, disk: dict, chain: list[str]) -> str:
    """The engine's XML for ``disk`` on ``chain`` (volume ids in its image, top first):
    nested <backingStore> placeholders and one metadata volume per member."""
    root = ET.fromstring(xml)
    vm = root.find(f"metadata/{metadata.PREFIX}:vm", _NS)
    for old in vm.findall(f"{metadata.PREFIX}:volume", _NS):
        vm.remove(old)
    for index, volume in enumerate(chain):
        attrs = {"domain": "data", "image": disk["image"], "volume": volume,
                 "format": "qcow2", "size_mib": str(disk["size_mib"])}
        if index == 0:
            attrs["alias"] = disk["alias"]
        if index + 1 < len(chain):
            attrs |= {"parent": f"{disk['image']}/{chain[index + 1]}", "parent-format": "qcow2"}
        ET.SubElement(vm, f"{{{metadata.NAMESPACE}}}volume", attrs)
    element = root.find("devices/disk")
    element.find("source").set("file", placeholders.storage("data",
                                                            f"{disk['image']}/{chain[0]}"))
    node, position = element, 2  # after <driver> and <source>
    for volume in chain[1:]:
        store = ET.Element("backingStore", type="file")
        ET.SubElement(store, "format", type="qcow2")
        ET.SubElement(store, "source", file=placeholders.storage(
            "data", f"{disk['image']}/{volume}"))
        node.insert(position, store)
        node, position = store, 2
    ET.SubElement(node, "backingStore")
    return ET.tostring(root, encoding="unicode")


def metadata_of(xml: str) -> str:
    return ET.tostring(ET.fromstring(xml).find(f"metadata/{metadata.PREFIX}:vm", _NS),
                       encoding="unicode")


def vol(disk: dict, volume: str) -> dict:
    return {"domain": "data", "image": disk["image"], "volume": volume, "format": "qcow2",
            "size_mib": disk["size_mib"]}


def snapshot_body(xml: str, disk: dict, new: str, parent: str, memory: dict | None = None,
                  chain: list[str] | None = None) -> dict:
    return {"snapshot": str(uuid.uuid4()), "quiesce": True, "memory_volume": memory,
            "disks": [{"alias": disk["alias"], "volume": vol(disk, new),
                       "parent": vol(disk, parent)}],
            "metadata": metadata_of(with_chain(xml, disk, chain or [new, parent]))}


def chain_of(agent, vm_id: str, disk: dict) -> list[str]:
    [entry] = [d for d in agent.client().chains(vm_id)["disks"] if d["alias"] == disk["alias"]]
    assert entry["target"] == "vda" and entry["block_job"] is None
    return [name.split("/")[1] for name in entry["chain"]]


def migrate(source, destination, vm_id: str, xml: str) -> None:
    prepared = destination.client().prepare_incoming(xml)
    source.client().migrate_vm(vm_id, f"qemu+tcp://{destination.address}/system",
                               prepared["paths"])
    deadline = time.monotonic() + MIGRATION_TIMEOUT
    while (report := source.client().migration(vm_id))["status"] == "running":
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
    assert report["status"] == "succeeded", report


@pytest.fixture
def leftovers(agents):
    """(vm id, volumes) to remove from every host after the test."""
    items: list[tuple[str, list[dict]]] = []
    yield items
    for vm_id, volumes in items:
        for agent in agents:
            for step in (partial(agent.client().destroy_vm, vm_id),
                         partial(agent.client().remove_vm, vm_id)):
                try:
                    step()
                except Exception:
                    pass
        try:
            agents[0].client().delete_volumes(volumes)
        except Exception:
            pass


def test_live_snapshots_move_the_chain_fail_cleanly_travel_and_revert_with_memory(
        agents, lab, lab_guest, leftovers):
    started = time.monotonic()
    first, second = agents[0], agents[1]
    xml, disk, vm_id = guest_xml()
    base = disk["volume"]
    n1, n2, n3, stale, full = (str(uuid.uuid4()) for _ in range(5))
    memory = {"domain": "data", "image": str(uuid.uuid4()), "volume": str(uuid.uuid4())}
    squeezed = {"domain": "data", "image": str(uuid.uuid4()), "volume": str(uuid.uuid4())}
    leftovers.append((vm_id, [vol(disk, v) for v in (base, n1, n2, n3, stale, full)]
                      + [memory, squeezed]))
    data_dir = lab_hosts.shared_dir(lab[0].state_dir, "data")
    image_dir = os.path.join(data_dir, disk["image"])
    assert first.client().start_vm(xml)["started"] is True
    wait_for_guest_agent(first, vm_id)
    write_marker(first, vm_id, "before the snapshots")

    # A quiesced disk-only snapshot: the disk's new top is the overlay made for it.
    taken = first.client().create_snapshot(vm_id, snapshot_body(xml, disk, n1, base))
    assert taken == {"quiesced": True, "memory": False,
                     "disks": [{"alias": disk["alias"], "volume": n1}]}
    assert chain_of(first, vm_id, disk) == [n1, base]
    live = first.client().vm_xml(vm_id)
    refs = {ref.volume: ref for ref in metadata.read(ET.fromstring(live)).volumes}
    assert refs[n1].alias == disk["alias"] and refs[n1].parent == f"{disk['image']}/{base}"
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json",
                                      os.path.join(image_dir, n1)], capture_output=True,
                                     check=True, text=True).stdout)
    assert info["backing-filename"] == f"../{disk['image']}/{base}"

    # The engine's view is stale (the top is n1 now): refused, nothing made.
    with pytest.raises(Conflict, match="chain changed"):
        first.client().create_snapshot(vm_id, snapshot_body(xml, disk, stale, base))
    assert not os.path.exists(os.path.join(image_dir, stale))

    # Storage full: the memory goes to a 1 MiB tmpfs on the domain (mounted in the host).
    squeezed_dir = os.path.join(data_dir, squeezed["image"])
    first.run(["mkdir", "-p", squeezed_dir])
    first.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", squeezed_dir])
    try:
        with pytest.raises(LibvirtError) as failed:
            first.client().create_snapshot(vm_id, snapshot_body(
                xml, disk, full, n1, squeezed, chain=[full, n1, base]))
        assert first.run(["ls", "-A", squeezed_dir], text=True).stdout == ""
    finally:
        first.run(["umount", squeezed_dir])
        first.run(["rmdir", squeezed_dir])
    message = failed.value.message
    assert "storage domain 'data'" in message and "the VM runs on its previous chain" in message
    assert "space" in message.lower(), message  # libvirt's reason
    assert not os.path.exists(os.path.join(image_dir, full))
    assert chain_of(first, vm_id, disk) == [n1, base]
    assert qga(first, vm_id, "guest-ping") == {}

    # The chain travels: the destination checks the engine's XML against its metadata.
    on_n1 = with_chain(xml, disk, [n1, base])
    migrate(first, second, vm_id, on_n1)
    assert chain_of(second, vm_id, disk) == [n1, base]
    wait_for_guest_agent(second, vm_id)  # its channel reconnects on the new host
    assert read_marker(second, vm_id) == "before the snapshots"

    # With memory: never quiesced (the saved RAM would hold frozen filesystems).
    write_marker(second, vm_id, "in the memory snapshot")
    taken = second.client().create_snapshot(
        vm_id, snapshot_body(on_n1, disk, n2, n1, memory, chain=[n2, n1, base]))
    assert (taken["quiesced"], taken["memory"]) == (False, True)
    memory_file = os.path.join(data_dir, memory["image"], memory["volume"])
    assert os.path.getsize(memory_file) > 0
    assert chain_of(second, vm_id, disk) == [n2, n1, base]
    write_marker(second, vm_id, "after the memory snapshot")

    # Revert: the guest's memory restored onto a NEW empty top over the frozen n1.
    second.client().destroy_vm(vm_id)
    second.client().remove_vm(vm_id)
    second.client().delete_volumes([vol(disk, n2)])
    made = first.client().create_overlay(vol(disk, n3), vol(disk, n1))
    assert made["created"] is True
    with pytest.raises(Conflict, match="already exists"):
        first.client().create_overlay(vol(disk, n3), vol(disk, n1))
    restored = first.client().restore_vm(with_chain(xml, disk, [n3, n1, base]), memory,
                                         keep_memory=True)
    assert restored["started"] is True and restored["status"] == "Up"
    assert read_marker(first, vm_id) == "in the memory snapshot"
    assert chain_of(first, vm_id, disk) == [n3, n1, base]
    assert os.path.exists(memory_file)  # a snapshot's memory is reverted to again
    print(f"agent snapshots lab test: {time.monotonic() - started:.1f} s")
