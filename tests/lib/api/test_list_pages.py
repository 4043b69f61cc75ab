"""The API's lists are the services' SQL pages: their filters are query parameters, hostile
ones are a 400 naming the field, and a caller sees only what it may read."""

from __future__ import annotations

import pytest
from api_fixtures import admin, agents, api, connect  # noqa: F401
from vm_rows import copy_vm

from engine_lib.model import AuditEntry, Volume


@pytest.fixture(scope="module")
def listed(api):
    engine = api.engine
    for cluster in ("c1", "c2"):
        engine.clusters.ensure(cluster, virt_type="qemu")
        engine.vms.ensure({"name": f"{cluster}-vm", "cluster": cluster, "memory": "128MiB"})
    copy_vm(engine, "c1-vm", 150, prefix="web-")
    with engine.store.transaction() as session:
        session.add_all([AuditEntry(entity_type="vm", entity_name="x", message="by alice",
                                    user_name="alice"),
                         Volume(image_id="i", storage_domain="d", name="cd", content_type="iso"),
                         Volume(image_id="j", storage_domain="d", name="blank")])
    return engine


def test_pages_of_vms(admin, listed):
    page = admin.get("/vms", params={"name": "web-*", "limit": 100, "offset": 100}).json()
    assert page["total"] == 150 and page["offset"] == 100 and len(page["items"]) == 50
    assert page["items"][0]["name"] == "web-00100"
    assert admin.get("/vms", params={"cluster": "c2"}).json()["items"][0]["name"] == "c2-vm"
    assert admin.get("/vms", params={"status": "Up"}).json()["total"] == 0


def test_filters_only_the_sql_page_has(admin, listed):
    assert [e["message"] for e in admin.get("/events", params={"user": "alice"}).json()[
        "items"]] == ["by alice"]
    disks = admin.get("/disks", params={"content_type": "iso"}).json()
    assert [d["name"] for d in disks["items"]] == ["cd"]
    document = admin.get("/openapi.json").json()
    params = {p["name"] for p in document["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert {"user", "entity_name", "severity", "after_id"} <= params and "visible" not in params


@pytest.mark.parametrize("path, params, field", [
    ("/vms", {"limit": 0}, "limit"), ("/vms", {"limit": 1001}, "limit"),
    ("/vms", {"offset": -1}, "offset"), ("/vms", {"offset": 2**63}, "offset"),
    ("/vms", {"name": "a" * 129}, "name"), ("/vms", {"name": "web\x00*"}, "name"),
    ("/vms", {"status": "up"}, "status"), ("/vms", {"cluster": "c" * 65}, "cluster"),
    ("/events", {"entity_name": "\x01"}, "entity_name"), ("/events", {"severity": "x"},
                                                          "severity"),
    ("/disks", {"content_type": "raw"}, "content_type"),
])
def test_hostile_filters_are_a_400_naming_the_field(admin, listed, path, params, field):
    answer = admin.get(path, params=params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "InvalidSpec" and answer.json()["details"]["field"] == field


def test_a_cluster_reader_pages_through_its_cluster(api, connect, listed):
    reader = connect(api.token_for("ReadOnly", "cluster", "c2"))
    page = reader.get("/vms").json()
    assert [vm["name"] for vm in page["items"]] == ["c2-vm"] and page["total"] == 1
    assert reader.get("/vms", params={"name": "web-*"}).json()["total"] == 0
    assert [c["name"] for c in reader.get("/clusters").json()["items"]] == ["c2"]
