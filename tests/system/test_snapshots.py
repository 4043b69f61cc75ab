"""Snapshots through the engine on the lab: a running VM's memory snapshot, the revert
of a running VM refused, then stopped and reverted: it comes back running where it was
(a marker in its memory and one on its disk from before the snapshot, not after), on a
chain storage and database agree on, with the snapshot's memory kept for next time."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

import pytest
from test_agent_hibernation import qga, read_marker, wait_for_guest_agent, write_marker
from test_migration import by_name, cluster  # noqa: F401 (fixture)

from engine_lib.model import Vm, Volume
from engine_lib.protocol.errors import Conflict
from engine_lib.services.common import get_vm
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

DISK_OFFSET = 4 * 1024 * 1024


def disk_io(agent, vm_id: str, data: bytes | None = None, count: int = 6) -> bytes:
    """Write ``data`` at DISK_OFFSET of the guest's /dev/vda (flushed), or read it back."""
    handle = qga(agent, vm_id, "guest-file-open", path="/dev/vda",
                 mode="r" if data is None else "r+")
    try:
        qga(agent, vm_id, "guest-file-seek", handle=handle, offset=DISK_OFFSET, whence=0)
        if data is not None:
            qga(agent, vm_id, "guest-file-write", handle=handle,
                **{"buf-b64": base64.b64encode(data).decode()})
            qga(agent, vm_id, "guest-file-flush", handle=handle)
            return data
        return base64.b64decode(qga(agent, vm_id, "guest-file-read", handle=handle,
                                    count=count)["buf-b64"])
    finally:
        qga(agent, vm_id, "guest-file-close", handle=handle)


def chains(engine, root: str) -> tuple[list[str], list[str]]:
    """The disk's chain in the database and on storage (qemu-img's headers), top first."""
    with engine.store.transaction(commit=False) as session:
        spec = next(d.spec for d in get_vm(session, "snap1").devices if d.name == "root")
        top = session.get(Volume, spec["volume_id"])
        in_db = [top.id, *(v.id for v in top.chain())]
        path = os.path.join(root, top.image_id, top.id)
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
                         capture_output=True, check=True, text=True).stdout
    return in_db, [os.path.basename(layer["filename"]) for layer in json.loads(out)]


def test_memory_snapshot_then_revert_resumes_where_it_was(engine, agents, cluster, lab):
    started = time.monotonic()
    root = lab_hosts.shared_dir(lab[0].state_dir, "data")
    vm = engine.vms.ensure({
        "name": "snap1", "cluster": cluster, "memory": "128MiB", "machine": "pc",
        "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
        "guest_agent": True, "placement": {"hosts": ["h1"]},
        "disks": [{"name": "root", "size": "64MiB", "storage_domain": "data"}]},
        state="running").entity
    agent = by_name(agents, vm["host"])
    try:
        wait_for_guest_agent(agent, vm["id"])
        write_marker(agent, vm["id"], "A")  # in the guest's memory (its /tmp)
        disk_io(agent, vm["id"], b"disk A")
        base = chains(engine, root)[0]
        snap = engine.snapshots.create("snap1", description="A", use_memory=True).entity
        assert (snap["status"], snap["memory"]) == ("ok", True)
        assert snap["disks"] == [{"disk": "root", "volume_id": base[0]}]
        in_db, on_storage = chains(engine, root)
        assert in_db == on_storage == [in_db[0], *base]
        live = agent.run(["virsh", "-c", "qemu:///system", "dumpxml", vm["id"]],
                         text=True).stdout
        assert in_db[0] in live  # libvirt writes the overlay
        write_marker(agent, vm["id"], "B")
        disk_io(agent, vm["id"], b"disk B")
        with pytest.raises(Conflict, match="VM 'snap1' is Up: stop it first"):
            engine.snapshots.restore("snap1", snap["id"])

        engine.vms.ensure({"name": "snap1"}, state="stopped", force=True)
        result = engine.snapshots.restore("snap1", snap["id"]).entity
        assert result["started_vm"]["status"] == "Up" and result["removed_snapshots"] == []
        agent = by_name(agents, result["started_vm"]["host"])
        wait_for_guest_agent(agent, vm["id"])
        assert read_marker(agent, vm["id"]) == "A"  # resumed from the snapshot's memory
        assert disk_io(agent, vm["id"]) == b"disk A"  # on the disk as it was then
        reverted, on_storage = chains(engine, root)
        assert reverted == on_storage and reverted[1:] == base and reverted[0] != in_db[0]
        image = next(d["image_id"] for d in result["started_vm"]["disks"]
                     if d["name"] == "root")
        assert not os.path.exists(os.path.join(root, image, in_db[0]))  # discarded
        with engine.store.transaction(commit=False) as session:
            memory = session.query(Vm).filter_by(name="snap1").one().snapshots[0].memory_volume
        assert os.path.exists(os.path.join(root, memory["image"], memory["volume"]))
    finally:
        engine.vms.ensure({"name": "snap1"}, state="absent", force=True)
    print(f"snapshot lab test: {time.monotonic() - started:.1f} s")
