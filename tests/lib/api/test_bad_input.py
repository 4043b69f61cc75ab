"""Bad input to the served API, over TLS: always a 4xx with a typed code, never a 5xx,
and nothing written (every table's row count is the same before and after)."""

from __future__ import annotations

import contextlib
import ssl
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import postgres
import pytest
from api_server import served_api
from sqlalchemy import func, select, update

from engine_lib.model import ApiToken, Base

MAX_BODY = 64 * 1024
HOSTILE = ["%", "_", "*", "vm_", "v%1", "'", '"', "\\", "' OR '1'='1", "vm1' --",
           "1; DROP TABLE vms; --", "\") OR 1=1 --", "[a-z]*", "?", "😀", "é" * 40,
           "ＶＭ１", "\u202evm1", "x" * 10_000, "vm1\x00", "\x00"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request, tmp_path_factory):
    settings = {"max_body": MAX_BODY}
    if request.param == "postgresql":  # NUL bytes, quotes and LIKE patterns differ there
        settings["db_url"] = postgres.create_database(
            request.getfixturevalue("postgres_server"), "bad_input")
    with served_api(tmp_path_factory, **settings) as served:
        served.engine.clusters.ensure("c1", virt_type="qemu")
        served.engine.vms.ensure({"name": "vm1", "cluster": "c1", "memory": "512MiB"},
                                 state="stopped")
        with _client(served, served.admin_token) as client:
            yield served, client


def _client(served, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=served.url, headers=headers, timeout=30,
                        verify=ssl.create_default_context(cafile=served.ca_file))


@pytest.fixture
def bare(api):
    """A client that sends only the Authorization header a test gives it."""
    with _client(api[0]) as client:
        yield client


def _counts(engine) -> dict[str, int]:
    with engine.store.transaction(commit=False) as session:
        return {table.name: session.scalar(select(func.count()).select_from(table))
                for table in Base.metadata.sorted_tables}


@contextlib.contextmanager
def nothing_written(engine):
    before = _counts(engine)
    yield
    assert _counts(engine) == before


def _refused(answer: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == code, body
    if field is not None:
        assert body["details"]["field"] == field, body
        assert body["message"].startswith(f"{field}: "), body
    return body


# -- bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b'{"description": ', b"{'description': 'x'}", b"\xff\xfe",
                                 b'{"description": "x"} trailing', b"NaN"])
def test_malformed_json_is_400_naming_the_body(api, raw):
    served, client = api
    with nothing_written(served.engine):
        answer = client.put("/clusters/c9", content=raw,
                            headers={"Content-Type": "application/json"})
        _refused(answer, 400, "InvalidSpec")
        assert answer.json()["details"]["field"] == "body"


@pytest.mark.parametrize(("body", "field"), [
    ({"descripton": "typo"}, "descripton"),
    ({"virt_type": "qemu", "extra": {"nested": 1}}, "extra"),
    ({"description": 5}, "description"),
    ({"description": ["a"]}, "description"),
    ([], "body"),
    ("a string", "body"),
])
def test_unknown_fields_and_wrong_types_are_400_naming_the_field(api, body, field):
    served, client = api
    with nothing_written(served.engine):
        _refused(client.put("/clusters/c9", json=body), 400, "InvalidSpec", field)


def test_a_field_inside_the_spec_is_named_with_its_path(api):
    served, client = api
    with nothing_written(served.engine):
        answer = client.put("/vms/vm9", params={"check_mode": "true"}, json={
            "spec": {"cluster": "c1", "memory": "512MiB", "vcpus": "many"}})
        body = _refused(answer, 400, "InvalidSpec")
        assert body["details"]["field"] == "vcpus", body
        _refused(client.put("/vms/vm9", json={"spec": {"cluster": "c1", "memory": "512MiB",
                                                       "custom_properties": {"a\x00b": "x"}}}),
                 400, "InvalidSpec", "spec.custom_properties.a\x00b")


def test_a_body_over_the_limit_is_413_declared_or_streamed(api):
    served, client = api
    big = b'{"description": "' + b"x" * MAX_BODY + b'"}'
    with nothing_written(served.engine):
        _refused(client.put("/clusters/c9", content=big,
                            headers={"Content-Type": "application/json"}),
                 413, "RequestTooLarge")

        def chunks():  # no Content-Length: counted as it arrives
            for start in range(0, len(big), 8192):
                yield big[start:start + 8192]

        _refused(client.put("/clusters/c9", content=chunks(),
                            headers={"Content-Type": "application/json"}),
                 413, "RequestTooLarge")
    # The connection that was refused is not reused in a bad state.
    assert client.get("/clusters/c1").status_code == 200


def test_long_strings_in_a_body_are_refused_naming_the_field(api):
    served, client = api
    with nothing_written(served.engine):
        _refused(client.put("/clusters/c9", json={"description": "x" * 10_000}),
                 400, "InvalidSpec", "description")
        _refused(client.put("/clusters/c9", json={"description": "nul\x00byte"}),
                 400, "InvalidSpec", "description")


# -- filters and names -------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_filters_match_literally_and_never_fail(api, value):
    served, client = api
    with nothing_written(served.engine):
        for path, params in (("/vms", {"name": value}), ("/vms", {"status": value}),
                             ("/clusters", {"name": value}), ("/events", {"user": value}),
                             ("/events", {"entity_name": value}),
                             ("/hosts", {"name": value, "status": value})):
            answer = client.get(path, params=params)
            assert answer.status_code < 500, (path, params, answer.text)
            if answer.status_code == 200:
                # Only '*' is a wildcard; nothing else here names vm1 or c1 exactly.
                names = [item.get("name") or item.get("entity_name")
                         for item in answer.json()["items"]]
                assert value == "*" or not {"vm1", "c1"} & set(names), (path, params, names)
            else:
                _refused(answer, 400, "InvalidSpec")


def test_a_glob_star_is_the_only_wildcard(api):
    _, client = api
    assert [vm["name"] for vm in client.get("/vms", params={"name": "vm*"}).json()["items"]] \
        == ["vm1"]
    assert client.get("/vms", params={"name": "vm_"}).json()["items"] == []
    assert client.get("/vms", params={"name": "%"}).json()["items"] == []


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_names_in_paths_are_not_found_or_refused(api, value):
    served, client = api
    with nothing_written(served.engine):
        for method, path, kwargs in (
                ("GET", "/clusters/{}", {}), ("GET", "/vms/{}/domain_xml", {}),
                ("GET", "/jobs/{}", {}), ("DELETE", "/clusters/{}", {}),
                ("PUT", "/clusters/{}", {"json": {}, "params": {"check_mode": "true"}})):
            answer = client.request(method, path.format(quote(value, safe="")), **kwargs)
            if method == "DELETE" and answer.status_code == 200:  # absent already
                assert answer.json()["changed"] is False
            elif method == "PUT" and answer.status_code == 200:  # a valid name, check mode
                assert answer.json()["entity"]["name"] == value
            else:
                assert answer.status_code in (400, 404), (method, path, value, answer.text)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"offset": -1},
                                    {"limit": "ten"}, {"offset": "1e3"}, {"offset": 2**63},
                                    {"offset": 97599133529947962432162334335041536}])
@pytest.mark.parametrize("path", ["/vms", "/jobs"])
def test_bad_paging_is_400_naming_the_parameter(api, path, params):
    _, client = api
    [field] = params
    _refused(client.get(path, params=params), 400, "InvalidSpec", field)


# -- tokens ------------------------------------------------------------------------------


def _as(client: httpx.Client, authorization: bytes | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return client.get("/clusters", headers=headers)


def test_a_nul_in_a_login_is_400(bare):
    _refused(bare.post("/auth/token", json={"username": "ad\x00min", "password": "x"}),
             400, "InvalidSpec", "username")


def test_forged_and_malformed_tokens_are_401_alike(api, bare):
    served, _ = api
    token_id = served.admin_token.split("_")[1]
    messages = set()
    for authorization in [None, b"", b"Bearer", b"Basic YWRtaW46YWRtaW4=",
                          b"bearer kst_x_y", f"Bearer kst_{token_id}_{'A' * 43}".encode(),
                          f"Bearer kst_{token_id}_".encode(), b"Bearer kst__",
                          b"Bearer kst_nope_nope", f"Bearer {served.admin_token}x".encode(),
                          f"Bearer {served.admin_token[:-1]}".encode(),
                          b"Bearer " + b"k" * 10_000, b"Bearer kst_\xc3\xa9_\xc3\xa9",
                          b"Bearer ' OR 1=1 --", b"Bearer %00"]:
        with nothing_written(served.engine):
            body = _refused(_as(bare, authorization), 401, "Unauthenticated")
        messages.add(body["message"])
    # Nothing tells a forger which part was wrong (only "no header" is worded apart).
    assert len(messages) <= 2, messages


def test_an_expired_token_is_401(api, bare):
    served, _ = api
    token = served.token_for("ReadOnly")
    assert _as(bare, f"Bearer {token}".encode()).status_code == 200
    token_id = token.split("_")[1]
    with served.engine.store.transaction() as session:
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(
            expires=datetime.now(UTC) - timedelta(seconds=1)))
    _refused(_as(bare, f"Bearer {token}".encode()), 401, "Unauthenticated")


def test_a_revoked_token_stops_working_on_the_very_next_request(api):
    served, client = api
    created = client.post("/tokens", json={"name": "short-lived"})
    assert created.status_code == 200, created.text
    token = created.json()["entity"]["token"]
    with _client(served, token) as own:
        assert own.get("/clusters").status_code == 200
        # Revoked with the token itself, on the same keep-alive connection.
        assert own.delete("/tokens/short-lived").status_code == 200
        _refused(own.get("/clusters"), 401, "Unauthenticated")
        _refused(own.post("/tokens", json={"name": "successor"}), 401, "Unauthenticated")
