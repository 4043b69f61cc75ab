"""Templates on real agents and the lab's shared storage: a template from a stopped VM
whose disk holds data, a thin VM (an overlay made at its first start) and a cloned VM
from it, the data in both, and removal refused while the thin VM exists."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_engine_on_lab import tiny_guest

from engine_lib.protocol.errors import Conflict
from kestrel_lab import hosts as lab_hosts

MARKER = "0x4b"  # the byte pattern written into the source disk's first MiB


@pytest.fixture
def cluster(engine, agents):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    return "lab"


def _file(lab, disk: dict) -> Path:
    return Path(lab_hosts.shared_dir(lab[0].state_dir, "data"), disk["image_id"],
                disk["volume_id"])


def _has_marker(path: Path) -> bool:
    """qemu-io reads through the file's chain, as the guest would."""
    run = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {MARKER} 0 1M",
                          str(path)], capture_output=True, text=True, check=False)
    return run.returncode == 0 and "Pattern verification failed" not in run.stdout


def _info(path: Path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                                     capture_output=True, text=True, check=True).stdout)


def test_template_thin_and_cloned_vms_share_the_source_data(engine, cluster, lab):
    names = ("tpl-src", "tpl-thin", "tpl-full")
    try:
        src = engine.vms.ensure(tiny_guest("tpl-src"), state="running").entity["disks"][0]
        engine.vms.ensure({"name": "tpl-src"}, state="stopped", force=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {MARKER} 0 1M",
                        str(_file(lab, src))], check=True, capture_output=True)

        tpl = engine.templates.ensure("tpl", vm="tpl-src").entity
        base = tpl["disks"][0]
        assert tpl["status"] == "ok" and base["volume_id"] != src["volume_id"]
        base_file = _file(lab, base)
        assert _has_marker(base_file) and "backing-filename" not in _info(base_file)

        thin = engine.vms.ensure({"name": "tpl-thin", "template": "tpl"}, state="running"
                                 ).entity["disks"][0]
        engine.vms.ensure({"name": "tpl-thin"}, state="stopped", force=True)
        thin_file = _file(lab, thin)
        # A qcow2 overlay whose backing is the template volume, written relative.
        assert _info(thin_file)["backing-filename"] == \
            f"../{base_file.parent.name}/{base_file.name}"
        assert _has_marker(thin_file)

        full = engine.vms.ensure({"name": "tpl-full", "template": "tpl", "clone": True}
                                 ).entity["disks"][0]
        full_file = _file(lab, full)
        assert "backing-filename" not in _info(full_file) and _has_marker(full_file)
        subprocess.run(["qemu-img", "compare", "-U", str(base_file), str(full_file)],
                       check=True, capture_output=True)

        with pytest.raises(Conflict, match="used by VM 'tpl-thin'"):
            engine.templates.ensure("tpl", state="absent")
        assert base_file.exists()
        engine.vms.ensure({"name": "tpl-thin"}, state="absent")
        assert engine.templates.ensure("tpl", state="absent").changed
        assert not base_file.exists() and _has_marker(full_file)  # the clone is independent
    finally:
        for name in names:
            engine.vms.ensure({"name": name}, state="absent")
        engine.templates.ensure("tpl", state="absent")

