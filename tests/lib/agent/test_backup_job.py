"""The backup job's decisions over a stand-in libvirt domain, with real qemu-img files:
checkpoints redefined oldest first, a refused incremental redone as a full into files
without a backing file, and a failed backup leaving no files and no checkpoint.
(tests/system/test_agent_backup.py runs the same on real libvirt and QEMU.)"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from types import SimpleNamespace

import libvirt
import pytest

from engine_lib.agent import backups
from engine_lib.agent.backup_request import parse
from engine_lib.agent.jobs import Jobs
from engine_lib.protocol.errors import LibvirtError

VM = "6a1d2d9e-0b7e-4a57-9d54-5b1c6c1f0a01"
CP = "<domaincheckpoint><name>{}</name></domaincheckpoint>"
XML = f"""<domain><uuid>{VM}</uuid><devices>
<disk type='file' device='disk'><driver type='qcow2'/><target dev='vda'/></disk>
<disk type='file' device='cdrom'><driver type='raw'/><target dev='sdc'/></disk>
</devices></domain>"""


def _error(message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (libvirt.VIR_ERR_OPERATION_FAILED, 0, message, 2, "", None, None, 0, 0)
    return error


class Domain:
    def __init__(self, checkpoints=(), refuse_incremental=False, outcome="completed"):
        self.checkpoints = list(checkpoints)
        self.redefined: list[str] = []
        self.begun: list[tuple[str, str]] = []
        self.refuse_incremental = refuse_incremental
        self.outcome = outcome
        self.polls = 2
        self.undeletable: set[str] = set()

    def UUIDString(self):
        return VM

    def isActive(self):
        return True

    def XMLDesc(self, _flags):
        return XML

    def blockInfo(self, _target):
        return [64 << 20, 0, 0]

    def listAllCheckpoints(self, _flags):
        return [self.checkpointLookupByName(n) for n in self.checkpoints]

    def checkpointCreateXML(self, xml, flags):
        assert flags == libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
        name = xml.split("<name>")[1].split("<")[0]
        self.redefined.append(name)
        self.checkpoints.append(name)

    def backupBegin(self, backup_xml, checkpoint_xml, flags):
        assert flags == libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL
        if self.refuse_incremental and "<incremental>" in backup_xml:
            raise _error("bitmap 'cp1' not found in disk 'vda'")
        self.begun.append((backup_xml, checkpoint_xml))
        self.checkpoints.append(checkpoint_xml.split("<name>")[1].split("<")[0])

    def jobStats(self, flags):
        if flags == libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED:
            kind = libvirt.VIR_DOMAIN_JOB_COMPLETED if self.outcome == "completed" \
                else libvirt.VIR_DOMAIN_JOB_FAILED
            return {"type": kind, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP,
                    "errmsg": "No space left on device"}
        if self.polls:
            self.polls -= 1
            return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "data_processed": 1 << 20,
                    "data_total": 2 << 20,
                    "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP}
        return {"type": libvirt.VIR_DOMAIN_JOB_NONE}

    def checkpointLookupByName(self, name):
        assert name in self.checkpoints
        return SimpleNamespace(getName=lambda: name,
                               getXMLDesc=lambda _flags: CP.format(name),
                               delete=lambda _flags: self._delete(name))

    def _delete(self, name):
        if name in self.undeletable:
            raise _error(f"checkpoint '{name}' is busy")
        self.checkpoints.remove(name)


@pytest.fixture
def storage(tmp_path, monkeypatch):
    monkeypatch.setattr(backups, "POLL", 0.001)
    return {"data": str(tmp_path)}


def _run(dom, storage, **body):
    hv = SimpleNamespace(config=SimpleNamespace(storage_domains=storage),
                         lookup=lambda _vm: dom, registry=SimpleNamespace(get=lambda _vm: None))
    jobs = Jobs()
    job = jobs.get(backups.start(hv, jobs, VM, parse(body))["job"])
    assert job.finished.wait(10)
    return job


def _volume(storage, name):
    return {"domain": "data", "image": "img", "volume": name}


def _previous(storage, name):
    """The disk's previous backup file."""
    os.makedirs(f"{storage['data']}/img")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{storage['data']}/img/{name}",
                    "64M"], check=True)


def _info(storage, name):
    return json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", f"{storage['data']}/img/{name}"],
        capture_output=True, text=True, check=True).stdout)


def _body(storage, name, incremental, parent=None, checkpoints=()):
    return {"backup": str(uuid.uuid4()), "checkpoint": name, "incremental": incremental,
            "checkpoints": [{"id": c, "xml": CP.format(c)} for c in checkpoints],
            "disks": [{"alias": "ua-1", "target": "vda",
                       "target_volume": _volume(storage, name),
                       "parent_volume": parent and _volume(storage, parent)}]}


def test_an_incremental_redefines_the_lost_checkpoints_and_chains_its_file(storage):
    _previous(storage, "cp1")
    dom = Domain()
    job = _run(dom, storage, **_body(storage, "cp3", "cp2", "cp1", ["cp1", "cp2"]))
    assert job.status == "succeeded", job.error
    assert dom.redefined == ["cp1", "cp2"] and job.result["fell_back"] == ""
    (backup_xml, checkpoint_xml), = dom.begun
    assert "<incremental>cp2</incremental>" in backup_xml and "backup='no'" in backup_xml
    assert "<disk name=\"vda\" checkpoint='bitmap'/>" in checkpoint_xml
    assert "sdc" not in checkpoint_xml  # a cdrom has no bitmap
    assert _info(storage, "cp3")["backing-filename"] == "../img/cp1"
    assert job.result["checkpoint_xml"] == CP.format("cp3")
    assert job.result["disks"][0]["size_mib"] == 64 and job.result["disks"][0]["bytes"] > 0
    # The next incremental builds on cp3 alone: the older checkpoints went, bitmaps too.
    assert job.result["pruned"] == ["cp1", "cp2"] and dom.checkpoints == ["cp3"]


def test_a_full_backup_prunes_what_it_redefined_and_keeps_what_libvirt_refuses(storage):
    dom = Domain(checkpoints=["cp0"])
    dom.undeletable.add("cp0")
    job = _run(dom, storage, **_body(storage, "cp2", "", checkpoints=["cp0", "cp1"]))
    assert job.status == "succeeded", job.error
    assert dom.redefined == ["cp1"]  # so that its bitmap can go
    assert job.result["pruned"] == ["cp1"] and dom.checkpoints == ["cp0", "cp2"]


def test_a_refused_incremental_is_taken_as_a_full_and_says_why(storage):
    _previous(storage, "cp1")
    dom = Domain(checkpoints=["cp1"], refuse_incremental=True)
    job = _run(dom, storage, **_body(storage, "cp2", "cp1", "cp1"))
    assert job.status == "succeeded", job.error
    assert "refused the incremental backup from checkpoint 'cp1'" in job.result["fell_back"]
    assert "bitmap 'cp1' not found" in job.result["fell_back"]
    assert "<incremental>" not in dom.begun[0][0]
    assert "backing-filename" not in _info(storage, "cp2")
    assert job.result["pruned"] == ["cp1"]


def test_an_unknown_checkpoint_falls_back_without_asking_libvirt(storage):
    _previous(storage, "cp0")
    dom = Domain(checkpoints=[])
    job = _run(dom, storage, **_body(storage, "cp2", "cp1", "cp0"))
    assert job.status == "succeeded", job.error
    assert "checkpoint 'cp1' is unknown here" in job.result["fell_back"]
    assert "<incremental>" not in dom.begun[0][0]


def test_a_failed_backup_leaves_no_file_and_no_checkpoint(storage):
    dom = Domain(checkpoints=["cp0"], outcome="failed")
    job = _run(dom, storage, **_body(storage, "cp1", ""))
    assert job.status == "failed"
    assert "No space left on device" in job.error["message"]
    assert not os.path.exists(f"{storage['data']}/img/cp1")
    assert dom.checkpoints == ["cp0"]


def test_an_existing_target_is_refused_and_kept(storage):
    os.makedirs(f"{storage['data']}/img")
    with open(f"{storage['data']}/img/cp1", "wb") as handle:
        handle.write(b"another backup")
    dom = Domain()
    job = _run(dom, storage, **_body(storage, "cp1", ""))
    assert job.status == "failed" and "already exists" in job.error["message"]
    assert open(f"{storage['data']}/img/cp1", "rb").read() == b"another backup"
    assert dom.begun == [] and dom.checkpoints == []


def test_libvirt_refusing_a_full_fails_the_job(storage):
    dom = Domain()
    dom.backupBegin = lambda *_args: (_ for _ in ()).throw(_error("disk busy"))
    job = _run(dom, storage, **_body(storage, "cp1", ""))
    assert job.status == "failed" and "disk busy" in job.error["message"]
    assert not os.path.exists(f"{storage['data']}/img/cp1")
    assert LibvirtError.code == job.error["code"]
