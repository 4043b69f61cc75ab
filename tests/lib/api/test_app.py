"""The served engine API over TLS: its OpenAPI document, authentication, the route-level
permission check, errors as typed bodies (400 InvalidSpec, never 422; 413; 500 without a
trace), lists in pages, and long operations as jobs."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from urllib.parse import urlsplit

import pytest
from api_fixtures import admin, agents, api, connect  # noqa: F401
from conftest import FakeAgent

from engine_lib.api.operations import CATALOG

STREAM = {op.id for op in CATALOG if op.stream}


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and set(body) == {"code", "message", "details"}
    return body


def _finished(client, job: dict, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while job["status"] == "running":
        assert time.monotonic() < deadline, f"job {job['id']} still running"
        time.sleep(0.02)  # polling the job is what a client does
        job = client.get(f"/jobs/{job['id']}").json()
    return job


# -- the document ---------------------------------------------------------------------------


def test_the_openapi_document_has_every_operation_with_its_extensions(connect):
    document = connect().get("/openapi.json").json()  # no token needed
    operations = {op["operationId"]: op for item in document["paths"].values()
                  for op in item.values()}
    for entry in CATALOG:
        if entry.id in STREAM:
            continue
        op = operations[entry.id]
        assert op["x-kestrel-returns"] in ("outcome", "page", "value")
        assert isinstance(op["x-kestrel-args"], list)
        assert op.get("x-kestrel-long", False) is entry.long
        assert "422" not in op["responses"]
        assert {"400", "401", "403", "404", "409"} <= set(op["responses"])
    assert operations["vms.ensure"]["x-kestrel-args"] == ["spec"]
    assert operations["vms.ensure"]["x-kestrel-path-from"] == {"name": "spec.name"}
    assert operations["vm_devices.nic"]["x-kestrel-args"] == ["vm", "name"]
    assert operations["vms.domain_xml"]["x-kestrel-unwrap"] == "text"
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_root_describes_the_api(connect):
    body = connect().get("/").json()
    assert body["version"] and body["links"]["vms"].endswith("/api/v1/vms")


# -- who is asking ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer", "Basic YWRtaW46eA==",
                                    "Bearer kst_0000_forged", "Bearer not-a-token"])
def test_no_or_a_forged_token_gets_401(connect, header):
    client = connect()
    response = client.get("/clusters", headers={"Authorization": header} if header else {})
    _error(response, 401, "Unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_login_gives_a_token_that_works_and_a_wrong_password_401(api, connect):
    name, password = api.user("ReadOnly")
    login = connect().post("/auth/token", json={"username": name, "password": password})
    assert login.status_code == 201, login.text
    me = connect(login.json()["token"]).get("/auth/whoami").json()
    assert me["user"] == name
    assert me["permissions"] == [{"role": "ReadOnly", "object_type": "system",
                                  "object_name": ""}]
    _error(connect().post("/auth/token", json={"username": name, "password": "x" * 12}),
           401, "Unauthenticated")


def test_a_missing_permission_is_403_naming_it(api, connect):
    reader = connect(api.token_for("ReadOnly"))
    assert reader.get("/clusters").status_code == 200
    body = _error(reader.put("/clusters/denied", json={"virt_type": "qemu"}), 403,
                  "PermissionDenied")
    assert body["details"]["permission"] == "cluster.create"
    assert "cluster.create" in body["message"]
    assert api.engine.clusters.info() == [] or all(
        c["name"] != "denied" for c in api.engine.clusters.info())


# -- bad input ----------------------------------------------------------------------------------


def test_malformed_json_is_400_invalid_spec(admin):
    body = _error(admin.put("/clusters/bad", content=b'{"virt_type": ',
                            headers={"content-type": "application/json"}), 400, "InvalidSpec")
    assert body["details"]["field"] == "body"


@pytest.mark.parametrize("request_, field", [
    (("PUT", "/clusters/bad", {"virt_type": "qemu", "bogus": 1}), "bogus"),
    (("PUT", "/clusters/bad", {"memory_overcommit": "lots"}), "memory_overcommit"),
    (("PUT", "/hosts/bad", {"address": "10.0.0.1"}), "cluster"),
    (("GET", "/clusters?limit=0", None), "limit"),
    (("GET", "/clusters?offset=-1", None), "offset"),
    (("GET", "/clusters?name=" + "x" * 200, None), "name"),
    (("PUT", "/clusters/bad?check_mode=perhaps", {}), "check_mode"),
    (("GET", "/events?after_id=" + "9" * 30, None), "after_id"),
    (("GET", "/jobs?offset=" + "9" * 30, None), "offset"),
    (("PUT", "/vms/v1", {"spec": {"name": "v2"}}), "spec.name"),
    (("PUT", "/vms/v1", {"state": "running"}), "spec"),
])
def test_bad_fields_are_400_naming_the_field(admin, request_, field):
    method, path, body = request_
    response = admin.request(method, path, json=body)
    assert _error(response, 400, "InvalidSpec")["details"]["field"] == field
    assert field in response.json()["message"]


def test_a_body_over_the_limit_is_413_whether_declared_or_not(api):
    # The served API's limit is 64 KiB (api_fixtures); a raw connection controls the framing,
    # and sends nothing after what the server must refuse (it answers, then closes).
    parts = urlsplit(api.url)
    context = ssl.create_default_context(cafile=api.ca_file)
    for chunked in (False, True):
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context,
                                           timeout=30)
        try:
            conn.putrequest("PUT", f"{parts.path}/clusters/big")
            conn.putheader("Authorization", f"Bearer {api.admin_token}")
            conn.putheader("Content-Type", "application/json")
            if chunked:  # no Content-Length: only counting the bytes catches it
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                piece = b'{"description": "' + b"x" * 70_000
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:  # refused on the header alone, before any of the body
                conn.putheader("Content-Length", str(100_000))
                conn.endheaders()
            response = conn.getresponse()
            assert response.status == 413
            assert json.loads(response.read())["code"] == "RequestTooLarge"
        finally:
            conn.close()
    assert all(c["name"] != "big" for c in api.engine.clusters.info())


def test_an_unexpected_failure_is_500_without_a_trace(api, admin, agents):
    class Broken(FakeAgent):
        def host_info(self, timeout=None):
            raise RuntimeError("secret internals")

    agents["10.7.7.7"] = Broken("broken")
    api.engine.clusters.ensure("c500", virt_type="qemu")
    response = admin.put("/hosts/h500", params={"check_mode": True},
                         json={"address": "10.7.7.7", "cluster": "c500"})
    body = _error(response, 500, "InternalError")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert body["details"] == {}


# -- results, pages, jobs --------------------------------------------------------------------


def test_an_ensure_answers_an_outcome_and_check_mode_changes_nothing(api, admin):
    planned = admin.put("/clusters/planned", params={"check_mode": True},
                        json={"virt_type": "qemu"}).json()
    assert planned["changed"] is True
    assert all(c["name"] != "planned" for c in api.engine.clusters.info())
    made = admin.put("/clusters/made", json={"virt_type": "qemu"})
    assert made.status_code == 200, made.text
    assert made.json()["changed"] is True and made.json()["entity"]["name"] == "made"
    assert admin.put("/clusters/made", json={"virt_type": "qemu"}).json()["changed"] is False


def test_lists_are_paged_and_filtered_by_name(api, admin):
    for name in ("pg-a", "pg-b", "pg-c", "other-pg"):
        api.engine.clusters.ensure(name, virt_type="qemu")
    page = admin.get("/clusters", params={"name": "pg-*", "limit": 2, "offset": 1}).json()
    assert page["total"] == 3 and page["offset"] == 1 and page["limit"] == 2
    assert [c["name"] for c in page["items"]] == ["pg-b", "pg-c"]
    hostile = admin.get("/clusters", params={"name": "%_[?]'\";--"})
    assert hostile.status_code == 200 and hostile.json()["items"] == []


def test_a_long_operation_is_a_job_that_finishes_and_is_its_users_alone(api, admin, connect):
    api.engine.clusters.ensure("cj", virt_type="qemu")
    started = admin.put("/hosts/hj", json={"address": "10.1.1.1", "cluster": "cj"})
    assert started.status_code == 202, started.text
    job = started.json()["job"]
    assert job["operation"] == "hosts.ensure" and job["status"] in ("running", "succeeded")
    done = _finished(admin, job)
    assert done["status"] == "succeeded" and done["progress"] == 100
    assert done["result"]["changed"] is True and done["result"]["entity"]["name"] == "hj"
    assert job["id"] in [j["id"] for j in admin.get("/jobs").json()["items"]]
    other = connect(api.token_for("ReadOnly"))
    _error(other.get(f"/jobs/{job['id']}"), 404, "NotFound")
    assert job["id"] not in [j["id"] for j in other.get("/jobs").json()["items"]]
    # check_mode answers inline
    planned = admin.put("/hosts/hj2", params={"check_mode": True},
                        json={"address": "10.1.1.2", "cluster": "cj"})
    assert planned.status_code == 200 and planned.json()["changed"] is True


def test_a_failed_job_carries_the_typed_error(admin):
    job = admin.put("/hosts/hf", json={"address": "10.1.1.3", "cluster": "missing"}).json()
    done = _finished(admin, job["job"])
    assert done["status"] == "failed" and done["error"]["code"] == "ClusterNotFound"


def test_a_template_from_a_snapshot_takes_its_id_and_checks_it(admin):
    for body, field in (({"vm": "v1", "snapshot_id": "../x"}, "snapshot_id"),
                        ({"disk": "d1", "snapshot_id": "0f6b6c1e-3c3a-4c8e-9a0e-2b1f6d1e5a77"},
                         "snapshot_id"),
                        ({"vm": "nope", "snapshot_id": "0f6b6c1e-3c3a-4c8e-9a0e-2b1f6d1e5a77"},
                         "vm")):
        started = admin.put("/templates/t1", json=body)
        assert started.status_code == 202, started.text
        done = _finished(admin, started.json()["job"])
        assert done["error"]["code"] == "InvalidSpec" and done["error"]["details"]["field"] \
            == field, done


def test_a_list_shows_only_what_the_token_may_read(api, connect):
    for name in ("vis-a", "vis-b"):
        api.engine.clusters.ensure(name, virt_type="qemu")
    reader = connect(api.token_for("ReadOnly", "cluster", "vis-a"))
    page = reader.get("/clusters", params={"name": "vis-*"}).json()
    assert [c["name"] for c in page["items"]] == ["vis-a"] and page["total"] == 1


def test_an_unknown_path_or_method_is_a_typed_error(admin):
    _error(admin.get("/nothing-here"), 404, "NotFound")
    assert _error(admin.post("/clusters"), 405, "InvalidSpec")["details"]["field"] == "method"
