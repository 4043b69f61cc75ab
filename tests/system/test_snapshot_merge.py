"""Deleting snapshots for real: live merges of a middle volume and of the active layer
on a running VM, the agent killed with SIGKILL during a live merge, and an offline merge.

The chain R (raw) <- A <- B is made here with qemu-img, each layer with its own data,
and registered as rows; the VM's disk is a new overlay T on B, with snapshot rows s1,
s2, s3 that froze R, A and B (what taking three snapshots leaves). After each delete
the chain on storage (qemu-img's headers) is the chain in the database, and every
layer's data still reads through it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
import uuid

import pytest
from agent_fixtures import is_alive, restart_agent
from test_agent_hibernation import qga, wait_for_guest_agent
from test_migration import by_name, cluster  # noqa: F401 (fixture)

from engine_lib.model import Snapshot, Volume
from engine_lib.protocol.errors import AgentUnreachable
from engine_lib.services import snapshot_merge, vm_config
from engine_lib.services.common import get_vm
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

MIB = 1024 * 1024
# (layer, pattern, offset in MiB, length in MiB): B holds enough data that a merge at
# 1 MiB/s still runs when the agent is killed and started again.
DATA = [("R", 0x11, 0, 1), ("A", 0x22, 1, 1), ("B", 0x33, 2, 1), ("B", 0x44, 8, 20)]
T_MARKER = b"written by the guest into the active layer"
T_OFFSET = 4 * MIB


@pytest.fixture
def volumes(lab, engine):
    """R <- A <- B on the shared domain "data" (one image), registered as rows."""
    image = str(uuid.uuid4())
    root = lab_hosts.shared_dir(lab[0].state_dir, "data")
    os.makedirs(os.path.join(root, image))
    ids = {name: str(uuid.uuid4()) for name in "RAB"}
    path = {name: os.path.join(root, image, ids[name]) for name in "RAB"}
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", path["R"], "64M"], check=True)
    for name, parent, fmt in (("A", "R", "raw"), ("B", "A", "qcow2")):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b",
                        f"../{image}/{ids[parent]}", "-F", fmt, path[name], "64M"], check=True)
    for name, pattern, offset, length in DATA:
        subprocess.run(["qemu-io", "-f", "raw" if name == "R" else "qcow2", "-c",
                        f"write -P {pattern} {offset}M {length}M", path[name]], check=True,
                       capture_output=True)
    with engine.store.transaction() as session:
        parent = None
        for name in "RAB":
            row = Volume(id=ids[name], image_id=image, storage_domain="data",
                         format="raw" if name == "R" else "qcow2", size_mib=64,
                         parent=parent)
            session.add(row)
            parent = row
    yield {"image": image, "ids": ids, "root": root}
    subprocess.run(["rm", "-rf", os.path.join(root, image)], check=True)


def _vm(engine, volumes) -> dict:
    engine.vms.ensure({"name": "merge1", "cluster": "lab", "memory": "128MiB",
                       "machine": "pc", "kernel": "images:vmlinuz",
                       "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
                       "guest_agent": True, "disks": [], "placement": {"hosts": ["h1"]}})
    ids = volumes["ids"]
    with engine.store.transaction() as session:
        vm = get_vm(session, "merge1")
        vm_config.apply(session, vm, {"disks": [
            {"name": "root", "size_mib": 64, "storage_domain": "data", "format": "qcow2",
             "interface": "virtio", "parent_volume_id": ids["B"]}]})
        for snap, frozen in (("s1", "R"), ("s2", "A"), ("s3", "B")):
            session.add(Snapshot(id=f"{snap}-{vm.id}", vm_id=vm.id, status="ok",
                                 disks=[{"disk": "root", "image_id": volumes["image"],
                                         "volume_id": ids[frozen]}]))
    return engine.vms.info("merge1")[0]


def _snap(vm, name):
    return f"{name}-{vm['id']}"


def _db_chain(engine) -> list[str]:
    with engine.store.transaction(commit=False) as session:
        device = next(d for d in get_vm(session, "merge1").devices if d.name == "root")
        top = session.get(Volume, device.spec["volume_id"])
        return [top.id, *(v.id for v in top.chain())]


def _storage_chain(volumes, top: str) -> list[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json",
                          os.path.join(volumes["root"], volumes["image"], top)],
                         capture_output=True, check=True, text=True).stdout
    return [os.path.basename(layer["filename"]) for layer in json.loads(out)]


def _check_chain(engine, volumes) -> list[str]:
    """The chain on storage is the database's, and every layer's data reads through it."""
    chain = _db_chain(engine)
    assert _storage_chain(volumes, chain[0]) == chain
    top = os.path.join(volumes["root"], volumes["image"], chain[0])
    fmt = "raw" if chain[0] == volumes["ids"]["R"] else "qcow2"
    for _, pattern, offset, length in DATA:
        subprocess.run(["qemu-io", "-r", "-U", "-f", fmt, "-c",
                        f"read -P {pattern} {offset}M {length}M", top], check=True,
                       capture_output=True)
    return chain


def _guest_io(agent, vm_id: str, data: bytes | None = None) -> bytes:
    """Write ``data`` at T_OFFSET of the guest's disk, or read it back."""
    handle = qga(agent, vm_id, "guest-file-open", path="/dev/vda",
                 mode="r" if data is None else "r+")
    try:
        qga(agent, vm_id, "guest-file-seek", handle=handle, offset=T_OFFSET, whence=0)
        if data is not None:
            qga(agent, vm_id, "guest-file-write", handle=handle,
                **{"buf-b64": base64.b64encode(data).decode()})
            qga(agent, vm_id, "guest-file-flush", handle=handle)
            return data
        return base64.b64decode(qga(agent, vm_id, "guest-file-read", handle=handle,
                                    count=len(T_MARKER))["buf-b64"])
    finally:
        qga(agent, vm_id, "guest-file-close", handle=handle)


def _block_job(agent, vm_id: str) -> str:
    """virsh's line about the disk's block job ("Block Commit: [ 12 %]"), "" if none."""
    out = agent.run(["virsh", "-c", "qemu:///system", "blockjob", vm_id, "vda", "--info"],
                    text=True, check=False).stdout.strip()
    return out if "Commit" in out else ""


def _wait(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)
    return found


def test_live_and_offline_merges_and_an_agent_killed_mid_merge(engine, agents, cluster,
                                                               volumes, monkeypatch):
    started = time.monotonic()
    ids = volumes["ids"]
    vm = _vm(engine, volumes)
    t = _db_chain(engine)[0]
    vm = engine.vms.ensure({"name": "merge1"}, state="running").entity
    agent = by_name(agents, vm["host"])
    try:
        assert _check_chain(engine, volumes) == [t, ids["B"], ids["A"], ids["R"]]
        wait_for_guest_agent(agent, vm["id"])
        _guest_io(agent, vm["id"], T_MARKER)

        # s2 froze A: B (20 MiB of data) commits into A at 1 MiB/s, T is rebased onto A.
        # The agent is killed while QEMU commits; the engine's wait gives up on it.
        monkeypatch.setattr(snapshot_merge, "BANDWIDTH_MIBPS", 1)
        errors: list[BaseException] = []

        def delete():
            try:
                snapshot_merge.delete(engine, "merge1", _snap(vm, "s2"))
            except BaseException as exc:  # asserted below
                errors.append(exc)

        worker = threading.Thread(target=delete)
        worker.start()
        _wait(lambda: "Block Commit" in _block_job(agent, vm["id"]), "block commit")
        os.kill(agent.pid, signal.SIGKILL)
        _wait(lambda: not is_alive(agent.pid), "agent exit", 10)
        worker.join(60)
        assert not worker.is_alive() and len(errors) == 1
        assert isinstance(errors[0], AgentUnreachable), errors
        restart_agent(agent)
        # QEMU went on alone; the lock stayed and the reconcile finishes the same merge.
        assert "Block Commit" in _block_job(agent, vm["id"])
        with engine.store.transaction(commit=False) as session:
            assert session.get(Snapshot, _snap(vm, "s2")).status == "locked"
        assert engine.snapshot_merge.reconcile() == []  # first seen: maybe still running
        assert engine.snapshot_merge.reconcile() == [_snap(vm, "s2")]
        monkeypatch.setattr(snapshot_merge, "BANDWIDTH_MIBPS", 0)
        assert _block_job(agent, vm["id"]) == ""
        assert _check_chain(engine, volumes) == [t, ids["A"], ids["R"]]
        assert not os.path.exists(os.path.join(volumes["root"], volumes["image"], ids["B"]))
        assert _guest_io(agent, vm["id"]) == T_MARKER

        # s3 froze B, now A: the active layer T commits into A and the disk pivots onto A.
        merged = snapshot_merge.delete(engine, "merge1", _snap(vm, "s3"))
        assert merged["live"] and merged["disks"] == [{"disk": "root", "merged": t,
                                                        "into": ids["A"]}]
        assert _check_chain(engine, volumes) == [ids["A"], ids["R"]]
        live = agent.run(["virsh", "-c", "qemu:///system", "dumpxml", vm["id"]],
                         text=True).stdout
        assert t not in live and ids["A"] in live  # the metadata names the new chain too
        assert _guest_io(agent, vm["id"]) == T_MARKER

        # Stopped: s1 froze R; A (the top now) commits into R offline.
        engine.vms.ensure({"name": "merge1"}, state="stopped", force=True)
        merged = snapshot_merge.delete(engine, "merge1", _snap(vm, "s1"))
        assert not merged["live"]
        assert _check_chain(engine, volumes) == [ids["R"]]
        subprocess.run(["qemu-io", "-r", "-f", "raw", "-c",
                        f"read -P 0x{T_MARKER[0]:x} {T_OFFSET} 1",
                        os.path.join(volumes["root"], volumes["image"], ids["R"])],
                       check=True, capture_output=True)
        with engine.store.transaction(commit=False) as session:
            assert session.query(Snapshot).count() == 0
            assert session.get(Volume, ids["A"]) is None and session.get(Volume, t) is None
        assert sorted(os.listdir(os.path.join(volumes["root"], volumes["image"]))) == \
            [ids["R"]]
    finally:
        engine.vms.ensure({"name": "merge1"}, state="absent")
    print(f"snapshot merge lab test: {time.monotonic() - started:.1f} s")
