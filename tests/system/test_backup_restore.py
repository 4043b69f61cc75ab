"""Backups of a stopped VM on a real agent and the lab's shared storage: full copies
of its disk as it was at each backup, removal, and restores into a new VM (that
starts) and a floating disk, each equal to the source at the backup point
(qemu-img compare)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_engine_on_lab import tiny_guest

from kestrel_lab import hosts as lab_hosts


@pytest.fixture
def cluster(engine, agents):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    return "lab"


def _file(lab, image_id: str, volume_id: str) -> Path:
    return Path(lab_hosts.shared_dir(lab[0].state_dir, "data"), image_id, volume_id)


def _write(path: Path, pattern: str, offset: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 1M",
                    str(path)], check=True, capture_output=True)


def _equal(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)],
                          capture_output=True, check=False).returncode == 0


def test_backups_of_a_stopped_vm_restore_into_a_new_vm_and_a_disk(engine, cluster, lab,
                                                                 agents):
    made: list[str] = []
    try:
        src = engine.vms.ensure(tiny_guest("bk-src"), state="running").entity["disks"][0]
        engine.vms.ensure({"name": "bk-src"}, state="stopped", force=True)
        source = _file(lab, src["image_id"], src["volume_id"])
        _write(source, "0x41", "0")
        first = engine.backups.create("bk-src").entity
        made.append(first["id"])
        assert first["mode"] == "full" and first["status"] == "succeeded"
        assert first["fallback_reason"].startswith("VM is Down")
        (one,) = first["disks"]
        first_file = _file(lab, one["image_id"], one["volume_id"])
        assert _equal(source, first_file)
        # The second backup is the disk as it is then; the first keeps its point.
        _write(source, "0x42", "2M")
        second = engine.backups.create("bk-src", mode="full").entity
        made.append(second["id"])
        (two,) = second["disks"]
        second_file = _file(lab, two["image_id"], two["volume_id"])
        assert _equal(source, second_file) and not _equal(first_file, second_file)

        assert engine.backups.remove(first["id"]).changed
        made.remove(first["id"])
        assert not first_file.exists() and second_file.exists()
        assert [b["id"] for b in engine.backups.info("bk-src")] == [second["id"]]

        vm = engine.backups.restore(second["id"], vm_name="bk-new").entity["vm"]
        restored = vm["disks"][0]
        restored_file = _file(lab, restored["image_id"], restored["volume_id"])
        assert restored["volume_id"] != src["volume_id"] and vm["memory_mib"] == 128
        assert _equal(source, restored_file)
        assert engine.vms.ensure({"name": "bk-new"}, state="running").entity["status"] == "Up"

        disk = engine.backups.restore(second["id"], disk_name="bk-disk").entity["disk"]
        assert _equal(source, _file(lab, disk["image_id"], disk["id"]))
        # (The lab registers no storage domain, which removing a floating disk needs.)
        agents[0].client().delete_volumes([{"domain": "data", "image": disk["image_id"],
                                            "volume": disk["id"]}])
    finally:
        for backup_id in made:
            engine.backups.remove(backup_id)
        for name in ("bk-src", "bk-new"):
            engine.vms.ensure({"name": name}, state="absent")
