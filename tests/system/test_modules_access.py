"""Modules through a real ansible-playbook against the engine API served over TLS (remote
mode: engine_url, token or username/password, ca_file; no engine keys, no database):
users, groups, permissions and tokens in three beats, and what a token may do."""

from __future__ import annotations

import pytest
from api_server import served_api
from engine_fixtures import Playbook


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with served_api(tmp_path_factory) as served:
        yield served


def remote(tmp_path, api, name, **credentials) -> Playbook:
    workdir = tmp_path / name
    workdir.mkdir()
    return Playbook(workdir, connection={"engine_url": api.url, "ca_file": api.ca_file,
                                         **credentials})


def three_beats(task):
    return [{**task, "check_mode": True}, task, {**task, "check_mode": True}]


def test_access_the_ansible_way_through_the_api(tmp_path, api):
    admin = remote(tmp_path, api, "admin", token=api.admin_token)
    tasks = [
        {"kestrel.virt.cluster": {"name": "prod"}},
        {"kestrel.virt.user": {"name": "alice", "user_password": "correct horse battery",
                               "email": "alice@example.com"}},
        {"kestrel.virt.group": {"name": "ops", "users": ["alice"]}},
        {"kestrel.virt.permission": {"role": "VmOperator", "group_name": "ops",
                                     "object_type": "cluster", "object_name": "prod"}},
    ]
    results = admin.run([beat for task in tasks for beat in three_beats(task)])
    for index in range(0, len(results), 3):
        check, real, again = results[index:index + 3]
        assert not real.get("failed"), real
        assert check["changed"] and real["changed"] and not again["changed"], index
    assert "correct horse" not in admin.output
    assert api.engine.permissions.info(group="ops")[0]["object_name"] == "prod"

    token_task = {"kestrel.virt.token": {"name": "ci", "user": "alice", "role": "VmOperator"},
                  "no_log": True}  # as the module's documentation asks
    check, made, again = admin.run(three_beats(token_task)[:2] + [token_task], "-v")
    assert check["changed"] and "token" not in check["token"]
    assert made["changed"] and made["token"]["token"].startswith("kst_")
    assert not again["changed"] and "token" not in again["token"]  # shown once only
    text = made["token"]["token"]
    assert text not in admin.output  # -v prints results; no_log censors this one

    # The token acts as alice, narrowed to VmOperator: reading yes, creating clusters no.
    alice = remote(tmp_path, api, "alice", token=text)
    denied, = alice.run([{"kestrel.virt.cluster": {"name": "new"}}])
    assert denied["failed"] and denied["error"]["code"] == "PermissionDenied"
    assert "lacks permission 'cluster.create'" in denied["msg"]

    # Revoked, it stops at once.
    revoked, = admin.run([{"kestrel.virt.token": {"name": "ci", "user": "alice",
                                                  "state": "absent"}}])
    assert revoked["changed"]
    refused, = alice.run([{"kestrel.virt.cluster": {"name": "prod"}}])
    assert refused["failed"] and refused["error"]["code"] == "Unauthenticated"


def test_a_password_login_lasts_one_task(tmp_path, api):
    name, password = api.user("ClusterAdmin")
    playbook = remote(tmp_path, api, "login", username=name, password=password)
    made, = playbook.run([{"kestrel.virt.cluster": {"name": f"{name}-c"}}])
    assert made["changed"] and made["cluster"]["name"] == f"{name}-c"
    assert password not in playbook.output
    logins = api.engine.tokens.info(user=name)
    assert logins and all(token["revoked"] for token in logins)


def test_mixing_remote_and_local_options_is_refused(tmp_path, api):
    playbook = remote(tmp_path, api, "mixed", token=api.admin_token, engine_dir=str(tmp_path))
    result, = playbook.run([{"kestrel.virt.cluster": {"name": "x"}}])
    assert result["failed"]
    assert "engine_url/token/ca_file (the engine API) and engine_dir" in result["msg"]
