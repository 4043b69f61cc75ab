"""The guest's data through snapshots, revert, live merge and backups, for real on the lab,
driven through the engine's services as the API and modules drive them.

The tiny guest writes markers straight into its disk /dev/vda through qemu-guest-agent
(closing the handle flushes the device) and keeps an ext2 filesystem busy on /dev/vdb
(``kestrel.fs=vdb``) with a shell loop started through guest-exec. What the engine left
on storage is read on the host with qemu-img, e2fsck and debugfs, never through the chain
the engine believes in alone.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

import pytest
from test_agent_hibernation import qga, wait_for_guest_agent
from test_migration import by_name, cluster  # noqa: F401 (fixture)

from engine_lib.services import backups, snapshot_merge, snapshots
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

MIB = 1024 * 1024
MARKER_A, MARKER_B, MARKER_C = (b"marker A: before the snapshot", b"marker B: after it",
                                b"marker C: after the full backup")
A_AT, B_AT, C_AT = 0, 1 * MIB, 2 * MIB
# The guest's filesystem loop: 64 KiB of new data into one of 16 files, the counter
# renamed into place and synced, until /tmp/stop exists; paced (at most ~640 KiB/s) below
# the merge's bandwidth, or an active commit could never catch up with it.
WRITER = ("i=0; while [ ! -e /tmp/stop ]; do "
          "dd if=/dev/urandom of=/mnt/data/blob$((i % 16)) bs=64k count=1 2>/dev/null; "
          "echo $i > /mnt/data/count.new && mv /mnt/data/count.new /mnt/data/count; sync; "
          "i=$((i + 1)); usleep 100000 2>/dev/null || sleep 0.1; done")
# What s2's overlay holds before its merge: at MERGE_MIBPS the commit spans seconds.
BULK_MIB, MERGE_MIBPS = 16, 4
# Incremental backup: the guest changes 16 regions of 256 KiB, 1 MiB apart, after a full
# backup of a disk holding 24 MiB of data.
FILL = (16, 24)  # dd seek, count in MiB
CHANGES = [(32 * MIB + i * MIB, 256 * 1024) for i in range(16)]


def _spec(name: str, *, fs: bool) -> dict:
    disks = [{"name": "root", "size": "64MiB", "storage_domain": "data"}]
    if fs:
        disks.append({"name": "fs", "size": "64MiB", "storage_domain": "data"})
    return {"name": name, "cluster": "lab", "memory": "128MiB", "machine": "pc",
            "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
            "cmdline": "console=ttyS0" + (" kestrel.fs=vdb" if fs else ""),
            "guest_agent": True, "disks": disks, "placement": {"hosts": ["h1"]}}


@pytest.fixture
def vms(engine, cluster):
    """Names of the VMs a test made: removed at the end."""
    made: list[str] = []
    yield made
    for name in made:
        engine.vms.ensure({"name": name}, state="absent")


def _start(engine, agents, name: str):
    vm = engine.vms.ensure({"name": name}, state="running").entity
    agent = by_name(agents, vm["host"])
    wait_for_guest_agent(agent, vm["id"])
    return vm, agent


def _path(lab, engine, name: str, disk: str) -> str:
    """The file the disk writes (its top volume) on the shared domain."""
    entry = next(d for d in engine.vms.info(name)[0]["disks"] if d["name"] == disk)
    return os.path.join(lab_hosts.shared_dir(lab[0].state_dir, "data"), entry["image_id"],
                        entry["volume_id"])


def _io(agent, vm_id: str, offset: int, data: bytes | None = None, count: int = 0) -> bytes:
    """Write ``data`` at ``offset`` of /dev/vda, or read ``count`` bytes there."""
    handle = qga(agent, vm_id, "guest-file-open", path="/dev/vda",
                 mode="r" if data is None else "r+")
    try:
        qga(agent, vm_id, "guest-file-seek", handle=handle, offset=offset, whence=0)
        if data is not None:
            qga(agent, vm_id, "guest-file-write", handle=handle,
                **{"buf-b64": base64.b64encode(data).decode()})
            return data
        return base64.b64decode(qga(agent, vm_id, "guest-file-read", handle=handle,
                                    count=count)["buf-b64"])
    finally:
        qga(agent, vm_id, "guest-file-close", handle=handle)


def _spawn(agent, vm_id: str, script: str) -> int:
    return int(qga(agent, vm_id, "guest-exec", path="/bin/sh", arg=["-c", script],
                   **{"capture-output": True})["pid"])


def _exited(agent, vm_id: str, pid: int, timeout: float = 60) -> str:
    """The guest process's output once it exited with status 0."""
    deadline = time.monotonic() + timeout
    while not (status := qga(agent, vm_id, "guest-exec-status", pid=pid))["exited"]:
        assert time.monotonic() < deadline, f"guest process {pid} still running"
        time.sleep(0.2)  # polling the guest's process table
    out = base64.b64decode(status.get("out-data", "")).decode()
    err = base64.b64decode(status.get("err-data", "")).decode()
    assert status["exitcode"] == 0, f"guest process failed: {out} {err}"
    return out


def _sh(agent, vm_id: str, script: str) -> str:
    return _exited(agent, vm_id, _spawn(agent, vm_id, script))


def _count(agent, vm_id: str) -> int:
    return int(_sh(agent, vm_id, "cat /mnt/data/count 2>/dev/null || echo -1"))


def _wait_count(agent, vm_id: str, at_least: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (count := _count(agent, vm_id)) < at_least:
        assert time.monotonic() < deadline, f"the guest's writer stalled at {count}"
    return count


def _host(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_revert_brings_back_only_the_snapshot_data_and_a_live_merge_under_writes_loses_none(
        engine, agents, lab, vms, tmp_path, monkeypatch):
    started = time.monotonic()
    vms.append("snapdata")
    engine.vms.ensure(_spec("snapdata", fs=True))
    vm, agent = _start(engine, agents, "snapdata")
    _io(agent, vm["id"], A_AT, MARKER_A)
    s1 = snapshots.create(engine, "snapdata", description="before B")
    _io(agent, vm["id"], B_AT, MARKER_B)

    # Live merge while the guest keeps writing its filesystem: s2 is taken under the
    # writes, then deleted (active commit + pivot) at MERGE_MIBPS, so the commit of what
    # the guest wrote since spans many of the writer's rounds.
    writer = _spawn(agent, vm["id"], WRITER)
    _wait_count(agent, vm["id"], 3)
    s2 = snapshots.create(engine, "snapdata", description="under writes")
    _sh(agent, vm["id"], f"dd if=/dev/urandom of=/mnt/data/bulk bs=1M count={BULK_MIB} "
                         "conv=fsync 2>/dev/null")
    before = _count(agent, vm["id"])
    monkeypatch.setattr(snapshot_merge, "BANDWIDTH_MIBPS", MERGE_MIBPS)
    merged = snapshot_merge.delete(engine, "snapdata", s2["id"])
    monkeypatch.setattr(snapshot_merge, "BANDWIDTH_MIBPS", 0)
    assert merged["live"]
    after = _count(agent, vm["id"])
    assert after > before, "the guest wrote nothing while the merge ran"
    _sh(agent, vm["id"], "touch /tmp/stop")
    _exited(agent, vm["id"], writer)
    latest = _count(agent, vm["id"])
    _sh(agent, vm["id"], "umount /mnt/data")  # a clean superblock for e2fsck -n
    assert [s["id"] for s in snapshots.list_for(engine, "snapdata")] == [s1["id"]]

    # The merged chain as files: the filesystem checks clean and holds the last count.
    fs_image = str(tmp_path / "fs.raw")
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw",
                    _path(lab, engine, "snapdata", "fs"), fs_image], check=True)
    fsck = _host("e2fsck", "-f", "-n", fs_image)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert _host("debugfs", "-R", "cat /count", fs_image).stdout.strip() == str(latest)

    # Revert (stopped) to s1: marker A is there, B is gone.
    engine.vms.ensure({"name": "snapdata"}, state="stopped", force=True)
    reverted = snapshots.revert(engine, "snapdata", s1["id"])
    assert reverted["id"] == s1["id"]
    vm, agent = _start(engine, agents, "snapdata")
    assert _io(agent, vm["id"], A_AT, count=len(MARKER_A)) == MARKER_A
    assert _io(agent, vm["id"], B_AT, count=len(MARKER_B)) == bytes(len(MARKER_B))
    print(f"snapshot data lab test: merge under {after - before} writer rounds, "
          f"{time.monotonic() - started:.1f} s")


def test_an_incremental_backup_holds_what_changed_and_restores_into_a_vm_that_boots(
        engine, agents, lab, vms):
    started = time.monotonic()
    vms.extend(["bkdata", "bkdata-restored"])
    engine.vms.ensure(_spec("bkdata", fs=False))
    vm, agent = _start(engine, agents, "bkdata")
    _sh(agent, vm["id"], f"dd if=/dev/urandom of=/dev/vda bs=1M seek={FILL[0]} "
                         f"count={FILL[1]} conv=fsync 2>/dev/null")
    full = backups.backup(engine, "bkdata", mode="full", storage_domain="data")
    assert (full["status"], full["mode"]) == ("succeeded", "full"), full

    _io(agent, vm["id"], C_AT, MARKER_C)
    for offset, length in CHANGES:
        _sh(agent, vm["id"], f"dd if=/dev/urandom of=/dev/vda bs=64k seek={offset // 65536} "
                             f"count={length // 65536} conv=fsync,notrunc 2>/dev/null")
    changed = sum(length for _offset, length in CHANGES) + 64 * 1024  # + marker C's cluster
    incremental = backups.backup(engine, "bkdata", storage_domain="data")
    assert incremental["mode"] == "incremental", incremental["fallback_reason"]
    assert incremental["from_checkpoint_id"] == full["checkpoint_id"]
    # Near what the guest changed (qcow2 metadata aside), far below the full's data.
    assert incremental["bytes_written"] <= 1.2 * changed + MIB, incremental
    assert full["bytes_written"] >= FILL[1] * MIB > 2 * incremental["bytes_written"]

    # Nothing writes the disk after the backup point: the source's chain is that point.
    engine.vms.ensure({"name": "bkdata"}, state="stopped", force=True)
    # The full's checkpoint was pruned with its bitmap: the disk keeps one, the newest.
    info = json.loads(_host("qemu-img", "info", "--output=json",
                            _path(lab, engine, "bkdata", "root")).stdout)
    bitmaps = info["format-specific"]["data"].get("bitmaps", [])
    assert [b["name"] for b in bitmaps] == [incremental["checkpoint_id"]], bitmaps
    restored = backups.restore(engine, incremental["id"], vm_name="bkdata-restored")["vm"]
    compare = _host("qemu-img", "compare", _path(lab, engine, "bkdata", "root"),
                    _path(lab, engine, restored["name"], "root"))
    assert compare.returncode == 0, compare.stdout + compare.stderr
    vm2, agent2 = _start(engine, agents, "bkdata-restored")
    assert _io(agent2, vm2["id"], C_AT, count=len(MARKER_C)) == MARKER_C
    print(f"backup data lab test: full {full['bytes_written']} B, incremental "
          f"{incremental['bytes_written']} B for {changed} B changed, "
          f"{time.monotonic() - started:.1f} s")
