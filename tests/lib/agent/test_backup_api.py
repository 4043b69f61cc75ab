"""The agent API's validation of backup and checkpoint requests: bad input names its
field and changes nothing (the hypervisor is never reached)."""

import json

import pytest

from engine_lib.agent.api import Api

VM = "6a1d2d9e-0b7e-4a57-9d54-5b1c6c1f0a01"
BACKUP = "0b0d1f4e-3c1a-4f5e-8d7b-2a9c6e5f4d31"
TARGET = {"domain": "data", "image": "b1", "volume": "v2", "format": "qcow2"}
PARENT = {"domain": "data", "image": "b1", "volume": "v1", "format": "qcow2"}
CP1 = "<domaincheckpoint><name>cp1</name></domaincheckpoint>"


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args)) or {"ok": True}


@pytest.fixture
def api():
    hv = Recorder()
    api = Api(config=None, hypervisor_factory=lambda _config: hv)
    api.calls = hv.calls
    return api


def body(**changes):
    disk = {"alias": "ua-1", "target": "vda", "target_volume": TARGET,
            "parent_volume": PARENT, **changes.pop("disk", {})}
    return {"backup": BACKUP, "checkpoint": "cp2", "incremental": "cp1",
            "checkpoints": [{"id": "cp1", "xml": CP1}], "disks": [disk], **changes}


def post(api, data):
    return api.handle("POST", f"/api/v1/vms/{VM}/backups", {}, json.dumps(data).encode())


def test_a_backup_reaches_the_hypervisor_parsed():
    hv = Recorder()
    api = Api(config=None, hypervisor_factory=lambda _config: hv)
    assert post(api, body())[0] == 200
    ((name, _jobs, vm_id, request),) = hv.calls
    assert (name, vm_id, request.checkpoint, request.incremental) == \
        ("backup", VM, "cp2", "cp1")
    assert request.checkpoints == (("cp1", CP1),)
    (disk,) = request.disks
    assert (disk.target, disk.volume.volume, disk.parent.volume) == ("vda", "v2", "v1")
    # A full backup has no parent volumes.
    assert post(api, body(incremental="", checkpoints=[], disk={"parent_volume": None}))[0] \
        == 200


def test_checkpoints_are_listed_and_deleted_by_name(api):
    assert api.handle("GET", f"/api/v1/vms/{VM}/checkpoints", {}, b"")[0] == 200
    assert api.handle("DELETE", f"/api/v1/vms/{VM}/checkpoints/cp1", {}, b"")[0] == 200
    assert api.calls == [("checkpoints", VM), ("delete_checkpoint", VM, "cp1")]
    status, doc = api.handle("DELETE", f"/api/v1/vms/{VM}/checkpoints/..", {}, b"")
    assert status == 400 and doc["error"]["details"]["field"] == "checkpoint"


@pytest.mark.parametrize("data, field", [
    (body(backup="b1"), "backup"),
    (body(checkpoint=""), "checkpoint"),
    (body(checkpoint="a/b"), "checkpoint"),
    (body(incremental="cp2"), "incremental"),
    (body(incremental=7), "incremental"),
    (body(checkpoints="cp1"), "checkpoints"),
    (body(checkpoints=[{"id": "cp1"}]), "checkpoints[0]"),
    (body(checkpoints=[{"id": "cp1", "xml": "<domaincheckpoint>"}]), "checkpoints[0].xml"),
    (body(checkpoints=[{"id": "cp1", "xml": CP1.replace("cp1", "cp9")}]),
     "checkpoints[0].xml"),
    (body(checkpoints=[{"id": "cp1", "xml": CP1}] * 2), "checkpoints[1].id"),
    (body(disks=[]), "disks"),
    (body(disk={"alias": "vda"}), "disks[0].alias"),
    (body(disk={"target": "/dev/vda"}), "disks[0].target"),
    (body(disk={"extra": 1}), "disks[0]"),
    (body(disk={"target_volume": {**TARGET, "image": ".."}}), "disks[0].target_volume.image"),
    (body(disk={"target_volume": {**TARGET, "format": "raw"}}),
     "disks[0].target_volume.format"),
    (body(disk={"parent_volume": None}), "disks[0].parent_volume"),
    (body(incremental="", disk={}), "disks[0].parent_volume"),
    (body(disk={"parent_volume": {**PARENT, "domain": "other"}}), "disks[0].parent_volume"),
    (body(disk={"parent_volume": TARGET}), "disks[0].parent_volume"),
    ({**body(), "disks": [body()["disks"][0]] * 2}, "disks[1].target"),
])
def test_bad_backup_requests_name_the_field_and_change_nothing(api, data, field):
    status, doc = post(api, data)
    assert status == 400 and api.calls == [], doc
    assert doc["error"]["details"]["field"] == field
