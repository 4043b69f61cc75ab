"""A thin disk (a qcow2 overlay on a volume of the shared storage domain) for real:
started, live-migrated both ways, hibernated and restored, restarted on another host.

The base volume is made here with qemu-img and registered as a row; the VM's disk
overlays it (its row's parent). The guest reads a marker written into the base
through the overlay, so every move shows the chain resolved on that host's mount.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid

import pytest
from test_agent_hibernation import qga, wait_for_guest_agent
from test_migration import by_name, cluster, copies, other  # noqa: F401 (fixture)

from engine_lib.model import Volume
from engine_lib.services import vm_config
from engine_lib.services.common import get_vm
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

MARKER = b"kestrel thin chain marker"


@pytest.fixture
def base(lab, engine):
    """A raw base volume on the shared domain "data", registered, with a marker at 0."""
    image, volume = str(uuid.uuid4()), str(uuid.uuid4())
    path = os.path.join(lab_hosts.shared_dir(lab[0].state_dir, "data"), image, volume)
    os.makedirs(os.path.dirname(path))
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", path, "32M"], check=True)
    with open(path, "r+b") as handle:
        handle.write(MARKER)
    with engine.store.transaction() as session:
        session.add(Volume(id=volume, image_id=image, storage_domain="data", format="raw",
                           size_mib=32, name="base"))
    yield {"image": image, "volume": volume, "path": path}
    os.unlink(path)
    os.rmdir(os.path.dirname(path))


def _thin_vm(engine, name: str, parent: str) -> dict:
    """A VM whose only disk overlays ``parent``, as a thin VM from a template has."""
    engine.vms.ensure({"name": name, "cluster": "lab", "memory": "128MiB", "machine": "pc",
                       "kernel": "images:vmlinuz", "initrd": "images:initrd.img",
                       "cmdline": "console=ttyS0", "guest_agent": True, "disks": [],
                       "placement": {"hosts": ["h1", "h2"]}})
    with engine.store.transaction() as session:
        vm_config.apply(session, get_vm(session, name), {"disks": [
            {"name": "thin", "size_mib": 64, "storage_domain": "data", "format": "qcow2",
             "interface": "virtio", "parent_volume_id": parent}]})
    return engine.vms.info(name)[0]["disks"][0]


def _guest_reads_marker(agent, vm_id: str) -> None:
    wait_for_guest_agent(agent, vm_id)
    handle = qga(agent, vm_id, "guest-file-open", path="/dev/vda", mode="r")
    data = base64.b64decode(qga(agent, vm_id, "guest-file-read", handle=handle,
                                count=len(MARKER))["buf-b64"])
    qga(agent, vm_id, "guest-file-close", handle=handle)
    assert data == MARKER


def _where(engine, agents, vm: dict) -> str:
    row = engine.vms.info(vm["name"])[0]
    assert row["status"] == "Up" and copies(agents, vm["id"]) == {row["host"]: "running"}
    return row["host"]


def test_a_thin_vm_runs_migrates_hibernates_and_restarts_elsewhere(engine, agents, cluster,
                                                                   base, lab):
    started = time.monotonic()
    disk = _thin_vm(engine, "thin1", base["volume"])
    vm = engine.vms.ensure({"name": "thin1"}, state="running").entity
    try:
        host = by_name(agents, vm["host"])
        # The live domain reads the chain the engine rendered, ending in an empty store.
        live = host.run(["virsh", "-c", "qemu:///system", "dumpxml", vm["id"]], text=True).stdout
        assert f"<source file='{base['path']}'" in live and "<backingStore/>" in live
        # The overlay names its backing relative, so every host's mount resolves it.
        overlay = os.path.join(os.path.dirname(os.path.dirname(base["path"])),
                               disk["image_id"], disk["volume_id"])
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", overlay], capture_output=True,
            check=True, text=True).stdout)
        assert info["backing-filename"] == f"../{base['image']}/{base['volume']}"
        assert info["backing-filename-format"] == "raw"
        _guest_reads_marker(host, vm["id"])
        inode = os.stat(overlay).st_ino

        # Live migration to the other host and back.
        source = vm["host"]
        there = engine.migrations.migrate("thin1", host=other(vm)).entity
        assert there["status"] == "succeeded" and _where(engine, agents, vm) == other(vm)
        _guest_reads_marker(by_name(agents, other(vm)), vm["id"])
        back = engine.migrations.migrate("thin1", host=source).entity
        assert back["status"] == "succeeded" and _where(engine, agents, vm) == source

        # Hibernation: memory saved to the domain, restored with the chain resolved again.
        assert engine.vms.ensure({"name": "thin1"}, state="suspended").entity["status"] \
            == "Suspended"
        engine.vms.ensure({"name": "thin1"}, state="running")
        now = _where(engine, agents, vm)
        _guest_reads_marker(by_name(agents, now), vm["id"])

        # What an HA restart does: a fresh start on another host, on the same overlay.
        engine.vms.ensure({"name": "thin1"}, state="stopped", force=True)
        elsewhere = "h2" if now == "h1" else "h1"
        engine.vms.ensure({"name": "thin1", "placement": {"hosts": [elsewhere]}},
                          state="running")
        assert _where(engine, agents, vm) == elsewhere
        _guest_reads_marker(by_name(agents, elsewhere), vm["id"])
        assert os.stat(overlay).st_ino == inode  # the same overlay, never made again
    finally:
        engine.vms.ensure({"name": "thin1"}, state="absent")
    assert copies(agents, vm["id"]) == {}
    assert not os.path.exists(overlay) and os.path.exists(base["path"])
    with engine.store.transaction(commit=False) as session:
        assert session.get(Volume, disk["volume_id"]) is None
        assert session.get(Volume, base["volume"]) is not None
    print(f"thin chain lab test: {time.monotonic() - started:.1f} s")
