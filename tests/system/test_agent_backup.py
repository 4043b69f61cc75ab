"""Push backups through the agent on real libvirt and QEMU: full, then incrementals.

The guest writes patterns straight onto its disk (/dev/vda, through its guest
agent; closing the device flushes it). Nothing else writes that disk, so after
each incremental the backup chain must read exactly as the disk: QEMU is
stopped (it flushes and stores its bitmaps) before qemu-img compares. The
domain is transient: destroyed and started again it has lost libvirt's
checkpoints, and the next incremental still works because the agent redefines
them from the engine's copies.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid

import pytest
from test_agent_hibernation import cleanup, guest_xml, qga, wait_for_guest_agent  # noqa: F401

from engine_lib.protocol.errors import Conflict
from engine_lib.services import volume_jobs
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

MiB = 1024 * 1024
PIECE = 64 * 1024


def _write(agent, vm_id: str, offset: int, length: int, byte: int) -> None:
    """Write ``length`` bytes of ``byte`` at ``offset`` of the guest's /dev/vda
    (in pieces: each is one virsh argument, which Linux caps at 128 KiB)."""
    handle = qga(agent, vm_id, "guest-file-open", path="/dev/vda", mode="r+")
    qga(agent, vm_id, "guest-file-seek", handle=handle, offset=offset, whence=0)
    chunk = base64.b64encode(bytes([byte]) * PIECE).decode()
    for _ in range(length // PIECE):
        qga(agent, vm_id, "guest-file-write", handle=handle, **{"buf-b64": chunk})
    qga(agent, vm_id, "guest-file-close", handle=handle)


def _backup(client, vm_id: str, checkpoint: str, incremental: str, checkpoints: list,
            alias: str, target: dict, parent: dict | None) -> dict:
    job = client.start_backup(vm_id, {
        "backup": str(uuid.uuid4()), "checkpoint": checkpoint, "incremental": incremental,
        "checkpoints": checkpoints,
        "disks": [{"alias": alias, "target": "vda", "target_volume": target,
                   "parent_volume": parent}]})["job"]
    return volume_jobs.wait(client, job, timeout=120)


def _volume() -> dict:
    return {"domain": "data", "image": str(uuid.uuid4()), "volume": str(uuid.uuid4()),
            "format": "qcow2"}


def _path(lab, volume: dict) -> str:
    return os.path.join(lab_hosts.shared_dir(lab[0].state_dir, "data"), volume["image"],
                        volume["volume"])


def _same(first: str, second: str) -> None:
    result = subprocess.run(["qemu-img", "compare", first, second], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_full_then_incrementals_across_a_restart_read_as_the_disk(agents, lab, lab_guest,
                                                                  cleanup):
    started = time.monotonic()
    agent = agents[0]
    client = agent.client(timeout=60)
    xml, disk, vm_id = guest_xml()
    cleanup.append((vm_id, disk, _volume()))
    backups = [_volume() for _ in range(4)]
    try:
        client.start_vm(xml)
        wait_for_guest_agent(agent, vm_id)
        _write(agent, vm_id, 0, MiB, 0xA1)

        full = _backup(client, vm_id, "cp1", "", [], disk["alias"], backups[0], None)
        assert full["fell_back"] == "" and full["disks"][0]["size_mib"] == 64
        assert client.checkpoints(vm_id) == {"checkpoints": ["cp1"]}

        _write(agent, vm_id, 8 * MiB, 2 * MiB, 0xB2)
        first = _backup(client, vm_id, "cp2", "cp1",
                        [{"id": "cp1", "xml": full["checkpoint_xml"]}], disk["alias"],
                        backups[1], backups[0])
        assert first["fell_back"] == ""
        # cp1 was pruned with its bitmap: the next incremental builds on cp2 alone.
        assert first["pruned"] == ["cp1"] and "<parent>" not in first["checkpoint_xml"]
        assert client.checkpoints(vm_id) == {"checkpoints": ["cp2"]}
        # Only what changed (2 MiB) plus qcow2 metadata, not the 64 MiB disk.
        assert 2 * MiB <= first["disks"][0]["bytes"] < 3 * MiB, first
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", _path(lab, backups[1])],
            capture_output=True, text=True, check=True).stdout)
        assert info["backing-filename"] == f"../{backups[0]['image']}/{backups[0]['volume']}"

        # A target that exists is refused, left as it was, and no checkpoint is added.
        before = os.stat(_path(lab, backups[1]))
        with pytest.raises(Conflict, match="already exists"):
            _backup(client, vm_id, "cp-x", "cp2", [], disk["alias"], backups[1], backups[0])
        assert os.stat(_path(lab, backups[1])).st_mtime_ns == before.st_mtime_ns
        assert client.checkpoints(vm_id) == {"checkpoints": ["cp2"]}

        # QEMU stops (flushing, storing its bitmaps): full <- incremental reads as the disk.
        client.destroy_vm(vm_id)
        _same(_path(lab, backups[1]), _path(lab, disk))

        # Started again, libvirt has forgotten the checkpoint; the agent redefines it.
        client.remove_vm(vm_id)
        client.start_vm(xml)
        assert client.checkpoints(vm_id) == {"checkpoints": []}
        wait_for_guest_agent(agent, vm_id)
        _write(agent, vm_id, 20 * MiB, 1 * MiB, 0xC3)
        second = _backup(client, vm_id, "cp3", "cp2",
                         [{"id": "cp2", "xml": first["checkpoint_xml"]}], disk["alias"],
                         backups[2], backups[1])
        assert second["fell_back"] == "" and second["pruned"] == ["cp2"]
        assert MiB <= second["disks"][0]["bytes"] < 2 * MiB, second
        assert client.checkpoints(vm_id) == {"checkpoints": ["cp3"]}
        assert client.delete_checkpoint(vm_id, "cp3")["deleted"] is True
        assert client.checkpoints(vm_id) == {"checkpoints": []}

        # A checkpoint whose bitmap is not in the disk (redefined: libvirt does not look):
        # libvirt refuses the incremental, the agent takes a full (no backing file), says why.
        bogus = ("<domaincheckpoint><name>lost</name><creationTime>1700000000</creationTime>"
                 "<disks><disk name='vda' checkpoint='bitmap' bitmap='lost'/></disks>"
                 "</domaincheckpoint>")
        fallback = _backup(client, vm_id, "cp4", "lost", [{"id": "lost", "xml": bogus}],
                           disk["alias"], backups[3], backups[2])
        assert "refused the incremental backup from checkpoint 'lost'" in \
            fallback["fell_back"], fallback
        assert "backing-filename" not in json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", _path(lab, backups[3])],
            capture_output=True, text=True, check=True).stdout)

        client.destroy_vm(vm_id)
        _same(_path(lab, backups[2]), _path(lab, disk))
        _same(_path(lab, backups[3]), _path(lab, disk))
    finally:
        client.delete_volumes([{k: v for k, v in b.items() if k != "format"}
                               for b in reversed(backups)])
    print(f"agent backup lab test: {time.monotonic() - started:.1f} s")
