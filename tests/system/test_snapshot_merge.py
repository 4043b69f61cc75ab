"""Deleting a snapshot from the middle of a chain, live, with the agent SIGKILLed while
QEMU's block commit runs; then an offline merge of the stopped VM. Real lab, through the
engine's services.

The chain of disk root: V0 (marker A) <- V1 (marker B, BULK_MIB of data) <- V2 (marker C,
the active layer). Deleting s1 commits V1 into V0 while V2 stays the top: a non-active
block commit, throttled so that it is still running when the agent dies. Whatever the
agent's restart leaves, the engine must end with one chain, on storage, in libvirt's live
XML and in its rows, and the guest must read what it wrote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET

import pytest
from agent_fixtures import restart_agent, run_in_host
from test_migration import cluster  # noqa: F401 (fixture)
from test_snapshot_data import _io, _path, _sh, _spec, _start, vms  # noqa: F401 (fixture)

from engine_lib.services import snapshot_merge, snapshots

pytestmark = pytest.mark.lab

MIB = 1024 * 1024
MARKERS = {"A": (0, b"marker A: in V0"), "B": (1 * MIB, b"marker B: in V1"),
           "C": (2 * MIB, b"marker C: in V2")}
# V1's data: at MERGE_MIBPS its commit spans several seconds, long enough to kill the
# agent in the middle and see QEMU's job still running after.
BULK_AT_MIB, BULK_MIB, MERGE_MIBPS = 8, 16, 2


def _live_chain(host, vm_id: str) -> list[str]:
    """vda's chain of files in libvirt's live XML, top first (virsh, inside the host)."""
    xml = run_in_host(host, ["virsh", "-c", "qemu:///system", "dumpxml", vm_id],
                      text=True).stdout
    disk = next(d for d in ET.fromstring(xml).iterfind("devices/disk")
                if d.find("target").get("dev") == "vda")
    files = []
    while disk is not None and disk.find("source") is not None:
        files.append(disk.find("source").get("file"))
        disk = disk.find("backingStore")
    return files


def _block_job(host, vm_id: str) -> str:
    """QEMU's block job on vda as virsh's raw lines (type, bandwidth, cur, end), or ""."""
    done = run_in_host(host, ["virsh", "-c", "qemu:///system", "blockjob", vm_id, "vda",
                              "--raw"], text=True, check=False)
    return done.stdout.strip() if "type=" in done.stdout else ""


def _bulk_sum(agent, vm_id: str) -> str:
    return _sh(agent, vm_id, f"dd if=/dev/vda bs=1M skip={BULK_AT_MIB} count={BULK_MIB} "
                             "2>/dev/null | md5sum").split()[0]


def _chain_ids(engine, name: str) -> list[str]:
    disk = next(d for d in engine.vms.info(name)[0]["disks"] if d["name"] == "root")
    return [disk["volume_id"], *[v["volume_id"] for v in disk.get("chain", [])]]


def test_a_middle_snapshot_merges_live_through_an_agent_kill_then_one_merges_offline(
        engine, agents, lab, vms):
    started = time.monotonic()
    vms.append("snapmerge")
    engine.vms.ensure(_spec("snapmerge", fs=False))
    vm, agent = _start(engine, agents, "snapmerge")
    host = next(h for h in lab if h.name == vm["host"])
    v0 = _chain_ids(engine, "snapmerge")[0]
    _io(agent, vm["id"], MARKERS["A"][0], MARKERS["A"][1])
    s1 = snapshots.create(engine, "snapmerge", description="s1")
    _io(agent, vm["id"], MARKERS["B"][0], MARKERS["B"][1])
    _sh(agent, vm["id"], f"dd if=/dev/urandom of=/dev/vda bs=1M seek={BULK_AT_MIB} "
                         f"count={BULK_MIB} conv=fsync,notrunc 2>/dev/null")
    bulk = _bulk_sum(agent, vm["id"])
    s2 = snapshots.create(engine, "snapmerge", description="s2")
    _io(agent, vm["id"], MARKERS["C"][0], MARKERS["C"][1])
    v2, v1, base = _chain_ids(engine, "snapmerge")
    assert base == v0
    v1_file = _path(lab, engine, "snapmerge", "root").replace(v2, v1)
    assert os.path.exists(v1_file)

    # Delete s1 (V1 into V0, V2 stays on top), throttled; SIGKILL the agent mid-commit.
    outcome: dict = {}

    def delete() -> None:
        try:
            outcome["result"] = snapshot_merge.delete(engine, "snapmerge", s1["id"])
        except Exception as exc:  # the engine's answer to the dead agent, checked below
            outcome["error"] = exc

    snapshot_merge.BANDWIDTH_MIBPS = MERGE_MIBPS
    try:
        thread = threading.Thread(target=delete)
        thread.start()
        deadline = time.monotonic() + 30
        while not _block_job(host, vm["id"]):
            assert thread.is_alive(), f"the merge ended before the kill: {outcome}"
            assert time.monotonic() < deadline, "no block commit within 30 s"
            time.sleep(0.1)  # polling QEMU's job through virsh
        os.kill(agent.pid, signal.SIGKILL)
        assert _block_job(host, vm["id"]), "QEMU's commit died with the agent"
        time.sleep(1)  # the engine's polls of the job meet a dead agent
        restart_agent(agent)
        thread.join(timeout=300)
    finally:
        snapshot_merge.BANDWIDTH_MIBPS = 0
    # The engine finished the merge itself (posting it again, the agent adopted QEMU's
    # job), or left the lock for its reconcile; either way one run of the reconcile after
    # the job ended leaves nothing locked.
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while any(s["status"] == "locked" for s in snapshots.list_for(engine, "snapmerge")):
        assert time.monotonic() < deadline, f"the merge lock stayed: {outcome}"
        snapshot_merge.reconcile(engine, seen)
        time.sleep(0.5)

    assert [s["id"] for s in snapshots.list_for(engine, "snapmerge")] == [s2["id"]]
    assert _chain_ids(engine, "snapmerge") == [v2, v0]
    live = _live_chain(host, vm["id"])
    assert [os.path.basename(f) for f in live] == [v2, v0], live
    assert not os.path.exists(v1_file), "the merged volume's file stayed"
    for name, (offset, marker) in MARKERS.items():
        assert _io(agent, vm["id"], offset, count=len(marker)) == marker, name
    assert _bulk_sum(agent, vm["id"]) == bulk

    # Offline: stop, delete s2 (V2 into V0 with qemu-img commit), start: all data there.
    engine.vms.ensure({"name": "snapmerge"}, state="stopped", force=True)
    offline = snapshot_merge.delete(engine, "snapmerge", s2["id"])
    assert not offline["live"]
    assert _chain_ids(engine, "snapmerge") == [v0]
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json",
                           _path(lab, engine, "snapmerge", "root")], capture_output=True,
                          text=True, check=True)
    assert '"backing-filename"' not in info.stdout, info.stdout
    vm, agent = _start(engine, agents, "snapmerge")
    for name, (offset, marker) in MARKERS.items():
        assert _io(agent, vm["id"], offset, count=len(marker)) == marker, name
    assert _bulk_sum(agent, vm["id"]) == bulk
    print(f"snapshot merge lab test: {outcome.get('error') or 'merged in one call'}; "
          f"{time.monotonic() - started:.1f} s")
