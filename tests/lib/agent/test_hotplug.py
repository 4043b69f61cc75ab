"""Hotplug requests: which device XML is accepted, how it is resolved, and the API's checks.

Attaching needs a real QEMU (libvirt's test driver cannot attach devices):
tests/system/test_agent_devices.py plugs and unplugs on lab hosts.
"""

from __future__ import annotations

import pytest

from engine_lib.agent import hotplug
from engine_lib.agent.api import Api
from engine_lib.agent.config import AgentConfig
from engine_lib.protocol import placeholders
from engine_lib.protocol.devices import find_by_alias
from engine_lib.protocol.errors import InvalidSpec

VM = "2f1c1b8e-7a43-4d4e-9a57-2a3a4f6b7c11"
DISK = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{placeholders.storage('data', 'img/vol')}'/>"
        "<target dev='vdb' bus='virtio'/><alias name='ua-disk2'/></disk>")


def test_a_disk_is_resolved_to_its_storage_domain_path():
    xml, paths = hotplug.resolve(hotplug.parse_device(DISK), {}, {"data": "/srv/data"})
    assert paths == ["/srv/data/img/vol"]
    assert "file=\"/srv/data/img/vol\"" in xml and "kestrel-placeholder" not in xml
    assert "<backingStore />" in xml  # no backing file from the image header


def test_a_disk_linked_out_of_its_domain_is_refused(tmp_path):
    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "data" / "img" / "vol").symlink_to("/dev/sda")
    with pytest.raises(InvalidSpec, match="vol is a symlink"):
        hotplug.resolve(hotplug.parse_device(DISK), {}, {"data": str(tmp_path / "data")})


@pytest.mark.parametrize("xml, reason", [
    ("<disk", "not well-formed"),
    ("<graphics type='vnc'><alias name='ua-g'/></graphics>", "cannot be hotplugged"),
    ("<interface type='bridge'><source bridge='br0'/></interface>", "needs <alias"),
    ("<interface type='bridge'><alias name='net1'/></interface>", "(got 'net1')"),
])
def test_device_xml_that_cannot_be_plugged_is_refused(xml, reason):
    with pytest.raises(InvalidSpec) as error:
        hotplug.parse_device(xml)
    assert error.value.field == "xml" and reason in error.value.reason


def test_the_device_is_found_again_by_its_alias():
    domain = (f"<domain><devices>{DISK}<interface type='bridge'><alias name='ua-nic'/>"
              "</interface></devices></domain>")
    assert find_by_alias(domain, "ua-nic").tag == "interface"
    assert find_by_alias(domain, "ua-gone") is None


class _Refuses:
    """A hypervisor no valid request reaches in these tests."""

    def __getattr__(self, name):
        raise AssertionError(f"a malformed request reached the hypervisor ({name})")


@pytest.fixture
def api():
    config = AgentConfig(name="t", address="127.0.0.1", port=0, libvirt_uri="test:///default",
                         ca="/ca", cert="/c", key="/k", source="test")
    return Api(config, hypervisor_factory=lambda _config: _Refuses())


@pytest.mark.parametrize("method, path, body, field", [
    ("POST", f"/api/v1/vms/{VM}/devices", b"", "body"),
    ("POST", f"/api/v1/vms/{VM}/devices", b"{}", "xml"),
    ("POST", f"/api/v1/vms/{VM}/devices", b'{"xml": ""}', "xml"),
    ("POST", f"/api/v1/vms/{VM}/devices", b'{"xml": "<disk/>", "bus": "x"}', "body"),
    ("POST", f"/api/v1/vms/{VM}/devices",
     b'{"xml": "<disk/>", "volume": {"domain": "data", "image": "i", "volume": "v", '
     b'"size_mib": -1}}', "volume.size_mib"),
    ("POST", f"/api/v1/vms/{VM}/devices",
     b'{"xml": "<disk/>", "volume": {"domain": "data", "image": "", "volume": "v", '
     b'"size_mib": 1}}', "volume.image"),
    ("POST", "/api/v1/vms/not-a-uuid/devices", b'{"xml": "<disk/>"}', "vm_id"),
    ("DELETE", f"/api/v1/vms/{VM}/devices/net0", b"", "alias"),
])
def test_a_malformed_hotplug_request_is_a_400_naming_the_field(api, method, path, body, field):
    status, document = api.handle(method, path, {}, body)
    assert status == 400
    assert document["error"]["details"]["field"] == field


def test_an_unplug_timeout_out_of_range_is_a_400(api):
    status, document = api.handle("DELETE", f"/api/v1/vms/{VM}/devices/ua-nic",
                                  {"timeout": ["-1"]}, b"")
    assert (status, document["error"]["details"]["field"]) == (400, "timeout")


def test_the_openapi_document_describes_stats_and_hotplug(api):
    _, document = api.handle("GET", "/api/v1/openapi.json", {}, b"")
    paths = document["paths"]
    assert {"/api/v1/stats", "/api/v1/vms/{id}/stats", "/api/v1/vms/{id}/devices",
            "/api/v1/vms/{id}/devices/{alias}"} <= set(paths)
    unplug = paths["/api/v1/vms/{id}/devices/{alias}"]["delete"]
    assert [p["name"] for p in unplug["parameters"]] == ["id", "alias", "timeout"]
