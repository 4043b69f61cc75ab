"""The agent API's validation of hibernate, restore and reboot requests: bad input changes nothing."""

import json

import pytest

from engine_lib.agent.api import Api

VM = "6a1d2d9e-0b7e-4a57-9d54-5b1c6c1f0a01"
XML = f"<domain type='qemu'><name>vm1</name><uuid>{VM}</uuid></domain>"
MEMORY = {"domain": "data", "image": "i1", "volume": "v1"}


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, *args, *kwargs.values())) \
            or {"ok": True}


@pytest.fixture
def api():
    hv = Recorder()
    api = Api(config=None, hypervisor_factory=lambda _config: hv)
    api.calls = hv.calls
    return api


def post(api, path, body):
    return api.handle("POST", "/api/v1" + path, {}, json.dumps(body).encode())


def test_hibernate_and_restore_reach_the_hypervisor_with_the_memory_volume(api):
    assert post(api, f"/vms/{VM}/hibernate", {"memory_volume": MEMORY})[0] == 200
    assert post(api, "/vms", {"xml": XML, "mode": "restore", "memory_volume": MEMORY})[0] == 200
    assert post(api, f"/vms/{VM}/reboot", {})[0] == 200
    assert post(api, "/vms", {"xml": XML, "mode": "restore", "memory_volume": MEMORY,
                              "keep_memory": True})[0] == 200
    (_, vm_id, hib), (_, xml, res, keep), reboot, (*_, kept) = api.calls
    assert (vm_id, xml, reboot, keep, kept) == (VM, XML, ("reboot", VM), False, True)
    assert (hib.domain, hib.image, hib.volume) == (res.domain, res.image, res.volume) == \
        ("data", "i1", "v1")


@pytest.mark.parametrize("path, body, field", [
    (f"/vms/{VM}/hibernate", {}, "memory_volume"),
    (f"/vms/{VM}/hibernate", {"memory_volume": {**MEMORY, "image": ""}}, "memory_volume.image"),
    ("/vms", {"xml": XML, "mode": "restore"}, "memory_volume"),
    ("/vms", {"xml": XML, "memory_volume": MEMORY}, "memory_volume"),
    ("/vms", {"xml": XML, "mode": "restore", "memory_volume": "data/i1/v1"}, "memory_volume"),
    ("/vms", {"xml": XML, "mode": "restore", "memory_volume": MEMORY, "keep_memory": "yes"},
     "keep_memory"),
    ("/vms", {"xml": XML, "keep_memory": True}, "keep_memory"),
])
def test_bad_requests_name_the_field_and_change_nothing(api, path, body, field):
    status, doc = post(api, path, body)
    assert status == 400 and api.calls == []
    assert doc["error"]["details"]["field"] == field
