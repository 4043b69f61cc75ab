"""RemoteEngine's call mapping against a scripted server over TLS: operations found by
operationId, arguments placed by the x-kestrel-* extensions, pages followed, jobs
polled, login tokens revoked. The served engine API is tests/lib/client/test_client_served.py's."""

from __future__ import annotations

import json

import api_stub
import pytest

from engine_lib.client import RemoteEngine
from engine_lib.protocol.errors import Cancelled, KestrelError, NoValidHost, Unauthenticated

P = "/api/v1"
BODY = {"content": {"application/json": {"schema": {"anyOf": [
    {"$ref": "#/components/schemas/b"}, {"type": "null"}]}}}}
CHECK = {"name": "check_mode", "in": "query"}
DOCUMENT = {
    "openapi": "3.1.0",
    "components": {"schemas": {"b": {"properties": {"spec": {}, "state": {}, "cpu": {}}}}},
    "paths": {
        P + "/clusters/{name}": {"put": {
            "operationId": "clusters.ensure", "x-kestrel-args": ["name"],
            "x-kestrel-returns": "outcome", "parameters": [{"name": "name", "in": "path"}, CHECK],
            "requestBody": BODY}},
        P + "/vms/{name}": {"put": {
            "operationId": "vms.ensure", "x-kestrel-args": ["spec"], "x-kestrel-long": True,
            "x-kestrel-path-from": {"name": "spec.name"}, "x-kestrel-returns": "outcome",
            "parameters": [{"name": "name", "in": "path"}, CHECK], "requestBody": BODY}},
        P + "/vms": {"get": {
            "operationId": "vms.info", "x-kestrel-args": [], "x-kestrel-returns": "page",
            "parameters": [{"name": n, "in": "query"} for n in ("offset", "limit", "cluster")]}},
        P + "/vms/{name}/domain_xml": {"get": {
            "operationId": "vms.domain_xml", "x-kestrel-args": ["name"],
            "x-kestrel-returns": "value", "x-kestrel-unwrap": "text",
            "parameters": [{"name": "name", "in": "path"}]}},
        P + "/tokens/{name}": {"delete": {
            "operationId": "tokens.revoke", "x-kestrel-returns": "outcome",
            "parameters": [{"name": "name", "in": "path"}, {"name": "user", "in": "query"}]}},
    },
}


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    with api_stub.serving(tmp_path_factory) as server:
        yield server


@pytest.fixture
def remote(stub):
    stub.routes.clear()
    stub.requests.clear()
    stub.route("GET", P + "/openapi.json", (200, DOCUMENT, {}))
    with RemoteEngine.connect(stub.url, token="kst_t", ca_file=stub.ca_file) as engine:
        yield engine


def sent(stub, index=-1):
    method, path, headers, body = stub.requests[index]
    return method, path, json.loads(body) if body else None


def test_an_outcome_call(stub, remote):
    stub.route("PUT", P + "/clusters/c1", (200, {"changed": True, "entity": {"name": "c1"},
                                                 "diff": {"before": {}, "after": {}}}, {}))
    outcome = remote.clusters.ensure("c1", cpu="host-model", check_mode=True)
    assert (outcome.changed, outcome.entity, outcome.diff) == (
        True, {"name": "c1"}, {"before": {}, "after": {}})
    assert sent(stub) == ("PUT", P + "/clusters/c1?check_mode=true", {"cpu": "host-model"})


def test_a_long_call_polls_its_job_until_it_ends(stub, remote):
    polls = iter([{"id": "j1", "status": "running", "progress": 50},
                  {"id": "j1", "status": "succeeded", "result": {
                      "changed": True, "entity": {"name": "web 1"}, "diff": None}}])
    stub.route("PUT", P + "/vms/web%201", (202, {"job": {"id": "j1", "status": "running"}}, {}))
    stub.route("GET", P + "/jobs/j1", lambda *_: (200, next(polls), {}))
    outcome = remote.vms.ensure({"name": "web 1", "memory": "1GiB"}, state="running")
    assert (outcome.changed, outcome.entity) == (True, {"name": "web 1"})
    assert sent(stub, 1) == ("PUT", P + "/vms/web%201",
                             {"spec": {"name": "web 1", "memory": "1GiB"}, "state": "running"})
    assert [r[1] for r in stub.requests[2:]] == [P + "/jobs/j1"] * 2


def test_a_failed_job_raises_its_typed_error(stub, remote):
    error = NoValidHost("a", {"filtered": {"h1": "memory"}}).to_dict()
    stub.route("PUT", P + "/vms/a", (202, {"job": {"id": "j2", "status": "failed",
                                                    "error": error}}, {}))
    with pytest.raises(NoValidHost, match="h1: memory") as failed:
        remote.vms.ensure({"name": "a"})
    assert failed.value.details["explanation"] == {"filtered": {"h1": "memory"}}
    cancelled = Cancelled("cancelled by bob").to_dict()
    with pytest.raises(Cancelled, match="cancelled by bob"):
        remote.wait_job({"id": "j3", "status": "cancelled", "error": cancelled})


def test_a_path_parameter_from_inside_an_argument_is_required(remote):
    with pytest.raises(KestrelError, match="spec.name: is required"):
        remote.vms.ensure({"memory": "1GiB"})


def test_lists_follow_every_page(stub, remote):
    vms = [{"name": f"vm{i}"} for i in range(2500)]

    def page(_handler, query, _body):
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        assert query["cluster"] == ["c1"]
        return 200, {"items": vms[offset:offset + limit], "total": len(vms), "offset": offset,
                     "limit": limit}, {}

    stub.route("GET", P + "/vms", page)
    assert remote.vms.info(cluster="c1") == vms
    assert len(stub.requests) == 1 + 3
    # Asking for one page gives that page.
    assert remote.vms.info(cluster="c1", offset=10, limit=5) == vms[10:15]


def test_wrapped_values_and_unknown_operations(stub, remote):
    stub.route("GET", P + "/vms/a/domain_xml", (200, {"text": "<domain/>"}, {}))
    assert remote.vms.domain_xml("a") == "<domain/>"
    with pytest.raises(AttributeError, match="no operation vms.explode"):
        remote.vms.explode()
    with pytest.raises(AttributeError, match="no service 'rockets'"):
        remote.rockets.info()
    with pytest.raises(TypeError, match="unexpected arguments colour"):
        remote.tokens.revoke(name="t1", colour="red")


def test_a_login_token_is_revoked_on_close(stub):
    stub.routes.clear()
    stub.requests.clear()
    stub.route("GET", P + "/openapi.json", (200, DOCUMENT, {}))
    stub.route("POST", P + "/auth/token", lambda _h, _q, body: (201, {
        "token": "kst_9_s", "id": 9, "user": json.loads(body)["username"]}, {}))
    stub.route("GET", P + "/tokens", (200, {"items": [{"id": 8, "name": "ci"},
                                                      {"id": 9, "name": "login-0a1b2c3d"}],
                                            "total": 2, "offset": 0, "limit": 1000}, {}))
    stub.route("DELETE", P + "/tokens/login-0a1b2c3d", (200, {"changed": True, "entity": None}, {}))
    with RemoteEngine.connect(stub.url, username="alice", password="correct horse",
                              ca_file=stub.ca_file):
        pass
    assert sent(stub, 1) == ("POST", P + "/auth/token",
                             {"username": "alice", "password": "correct horse"})
    assert "Authorization" not in stub.requests[1][2]
    method, path, headers, _ = stub.requests[-1]
    assert (method, path, headers["Authorization"]) == (
        "DELETE", P + "/tokens/login-0a1b2c3d", "Bearer kst_9_s")


def test_a_refused_login_is_unauthenticated(stub):
    stub.routes.clear()
    stub.route("GET", P + "/openapi.json", (200, DOCUMENT, {}))
    stub.route("POST", P + "/auth/token", (401, Unauthenticated(
        "invalid username or password").to_dict(), {}))
    with pytest.raises(Unauthenticated, match="invalid username or password"):
        RemoteEngine.connect(stub.url, username="alice", password="wrong", ca_file=stub.ca_file)


def test_credentials_are_one_kind(stub):
    with pytest.raises(KestrelError, match="token and username/password are mutually exclusive"):
        RemoteEngine.connect(stub.url, token="t", username="a", password="b")
    with pytest.raises(KestrelError, match="password: required with username"):
        RemoteEngine.connect(stub.url, username="a")
