"""engine_lib.client.http against a scripted server over real TLS (tests/support/api_stub.py)."""

from __future__ import annotations

import io
import json

import api_stub
import pytest

from engine_lib.client.http import Http
from engine_lib.protocol.errors import (
    CertificateError,
    InvalidSpec,
    KestrelError,
    PermissionDenied,
)


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    with api_stub.serving(tmp_path_factory) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(stub):
    stub.routes.clear()
    stub.requests.clear()
    stub.connections.clear()
    stub.drop_after_each = False
    while not stub.closed.empty():
        stub.closed.get()


def test_json_round_trip_with_the_token(stub):
    stub.route("PUT", "/api/v1/clusters/c1", lambda h, q, body: (200, {
        "body": json.loads(body), "check_mode": q.get("check_mode")}, {}))
    http = Http(stub.url, ca_file=stub.ca_file, token="kst_1_secret")
    status, answer = http.json("PUT", "/clusters/c1", query={"check_mode": True, "x": None},
                               body={"cpu": "host-model"})
    assert (status, answer) == (200, {"body": {"cpu": "host-model"}, "check_mode": ["true"]})
    assert stub.requests[0][2]["Authorization"] == "Bearer kst_1_secret"
    # A path given with the prefix is not prefixed twice.
    http.json("PUT", "/api/v1/clusters/c1", body={})
    assert stub.requests[1][1] == "/api/v1/clusters/c1"


def test_error_bodies_raise_the_typed_error(stub):
    stub.route("PUT", "/api/v1/vms/a", (400, InvalidSpec("memory", "must be a size").to_dict(), {}))
    stub.route("GET", "/api/v1/vms", (403, PermissionDenied("bob", "read", "system", "").to_dict(),
                                      {}))
    stub.route("GET", "/api/v1/broken", (502, b"<html>bad gateway</html>", {}))
    http = Http(stub.url, ca_file=stub.ca_file)
    with pytest.raises(InvalidSpec) as invalid:
        http.json("PUT", "/vms/a", body={})
    assert (invalid.value.field, invalid.value.message) == ("memory", "memory: must be a size")
    with pytest.raises(PermissionDenied, match="lacks permission 'read'") as denied:
        http.json("GET", "/vms")
    assert denied.value.details["permission"] == "read"
    with pytest.raises(KestrelError, match="HTTP 502") as other:
        http.json("GET", "/broken")
    assert other.value.details == {"status": 502}


def test_a_connection_the_server_closed_while_idle_is_reopened(stub):
    stub.route("GET", "/api/v1/", (200, {"version": "1"}, {}))
    http = Http(stub.url, ca_file=stub.ca_file)
    assert http.json("GET", "/")[1] == {"version": "1"}
    assert http.json("GET", "/")[1] == {"version": "1"}
    assert len(stub.connections) == 1  # kept alive
    stub.drop_after_each = True
    for _ in range(3):
        assert http.json("GET", "/")[1] == {"version": "1"}
        stub.closed.get(timeout=10)  # the server has closed it before the next request
    # The first went on the kept connection (then dropped), each other on a new one.
    assert len(stub.connections) == 3


def test_streams_send_a_file_and_read_the_answer(stub):
    stub.route("PUT", "/api/v1/disks/d/content", lambda h, q, body: (
        200, {"received": len(body), "type": h.headers["Content-Type"]}, {}))
    stub.route("GET", "/api/v1/disks/d/content", (200, b"\0" * 70000, {"X-Kestrel-Sha256": "ab"}))
    http = Http(stub.url, ca_file=stub.ca_file, token="t")
    response = http.open("PUT", "/disks/d/content", body=io.BytesIO(b"x" * 5000), length=5000)
    assert json.loads(response.read()) == {"received": 5000, "type": "application/octet-stream"}
    response.close()
    response = http.open("GET", "/disks/d/content")
    assert response.getheader("X-Kestrel-Sha256") == "ab"
    assert len(response.read()) == 70000
    response.close()
    stub.route("GET", "/api/v1/disks/e/content", (404, {"code": "NotFound", "message": "disk 'e' "
                                                        "does not exist", "details": {}}, {}))
    with pytest.raises(KestrelError, match="disk 'e' does not exist"):
        http.open("GET", "/disks/e/content")


def test_the_server_must_be_signed_by_the_given_ca(stub, tmp_path_factory):
    with api_stub.serving(tmp_path_factory) as other:  # another engine CA
        with pytest.raises(CertificateError, match="certificate signature failure"):
            Http(other.url, ca_file=stub.ca_file).json("GET", "/")


def test_an_agent_certificate_from_the_same_ca_is_not_the_api(tmp_path_factory):
    with api_stub.serving(tmp_path_factory, unit="agent") as agent:
        agent.route("GET", "/api/v1/", (200, {}, {}))
        with pytest.raises(CertificateError, match="not an engine API certificate .OU=api."):
            Http(agent.url, ca_file=agent.ca_file, token="secret").json("GET", "/")
        assert agent.requests == []  # the token never went to it


def test_the_certificate_must_name_the_host_dialled(tmp_path_factory):
    with api_stub.serving(tmp_path_factory, address="127.0.0.2") as stub:
        with pytest.raises(CertificateError, match="IP address mismatch"):
            Http(stub.url, ca_file=stub.ca_file).json("GET", "/")


def test_bad_urls_and_ca_files_name_the_option(tmp_path):
    with pytest.raises(KestrelError, match="engine_url: 'http://e:80' is not an https:// URL"):
        Http("http://e:80")
    with pytest.raises(KestrelError, match="ca_file: cannot load"):
        Http("https://e", ca_file=str(tmp_path / "missing.pem"))


def test_an_unreachable_engine_is_a_kestrel_error(stub):
    http = Http("https://127.0.0.1:1", ca_file=stub.ca_file, timeout=5)
    with pytest.raises(KestrelError, match="cannot reach the engine API at https://127.0.0.1:1"):
        http.json("GET", "/")
