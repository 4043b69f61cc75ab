"""RemoteEngine against the real engine API served over TLS (tests/support/api_server.py):
the same calls as the local facade, answered the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from api_server import served_api

from engine_lib.client import RemoteEngine, remote
from engine_lib.model import Vm
from engine_lib.protocol.errors import (
    ClusterNotFound,
    InvalidSpec,
    PermissionDenied,
    Unauthenticated,
    VmNotFound,
)
from engine_lib.services import stats_history
from engine_lib.services.common import find


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with served_api(tmp_path_factory) as served:  # no hosts: no agent is ever called
        yield served


@pytest.fixture
def admin(api):
    with RemoteEngine.connect(api.url, token=api.admin_token, ca_file=api.ca_file) as engine:
        yield engine


def test_outcomes_match_the_local_facade(api, admin):
    predicted = admin.clusters.ensure("c-remote", description="remote", check_mode=True)
    assert predicted.changed and predicted.entity["name"] == "c-remote"
    with pytest.raises(ClusterNotFound):  # check mode changed nothing
        api.engine.clusters.get("c-remote")
    made = admin.clusters.ensure("c-remote", description="remote")
    assert made.changed and made.entity == api.engine.clusters.get("c-remote")
    again = admin.clusters.ensure("c-remote", description="remote")
    assert not again.changed
    assert admin.clusters.get("c-remote") == api.engine.clusters.get("c-remote")


def test_typed_errors_cross_the_wire(api, admin):
    with pytest.raises(ClusterNotFound, match="cluster 'nowhere' does not exist"):
        admin.clusters.get("nowhere")
    with pytest.raises(InvalidSpec) as invalid:
        admin.clusters.ensure("c-bad", memory_overcommit="lots")
    assert invalid.value.field
    reader = api.token_for("ReadOnly")
    with RemoteEngine.connect(api.url, token=reader, ca_file=api.ca_file) as engine:
        with pytest.raises(PermissionDenied, match="lacks permission 'cluster.create'"):
            engine.clusters.ensure("c-denied")


def test_lists_are_whole_however_many_pages(api, admin, monkeypatch):
    for index in range(7):
        api.engine.clusters.ensure(f"paged-{index}")
    monkeypatch.setattr(remote, "PAGE_LIMIT", 3)
    names = [c["name"] for c in admin.clusters.info() if c["name"].startswith("paged-")]
    assert names == [f"paged-{index}" for index in range(7)]


def test_a_long_operation_runs_as_a_job_and_returns_its_outcome(api, admin):
    admin.clusters.ensure("c-vms")
    outcome = admin.vms.ensure({"name": "vm-remote", "cluster": "c-vms", "memory": "128MiB"},
                               state="stopped")
    assert outcome.changed and outcome.entity["name"] == "vm-remote"
    assert [vm["id"] for vm in api.engine.vms.info() if vm["name"] == "vm-remote"] == [
        outcome.entity["id"]]
    assert admin.vms.domain_xml("vm-remote").startswith("<domain")


def test_a_password_login_is_revoked_on_close(api):
    name, password = api.user("ReadOnly")
    engine = RemoteEngine.connect(api.url, username=name, password=password,
                                  ca_file=api.ca_file)
    login = engine.http.token
    assert engine.clusters.info() is not None
    assert [t["name"] for t in engine.tokens.info()] == [t["name"] for t in
                                                         api.engine.tokens.info(user=name)]
    engine.close()
    assert [t for t in api.engine.tokens.info(user=name) if not t["revoked"]] == []
    with RemoteEngine.connect(api.url, token=login, ca_file=api.ca_file) as stale:
        with pytest.raises(Unauthenticated):
            stale.clusters.info()


def test_a_wrong_password_is_refused(api):
    name, _ = api.user("ReadOnly")
    with pytest.raises(Unauthenticated, match="invalid username or password"):
        RemoteEngine.connect(api.url, username=name, password="not the password!",
                             ca_file=api.ca_file)


def test_statistics_over_the_wire_as_the_local_facade(api, admin):
    api.engine.clusters.ensure("c-stats")
    api.engine.vms.ensure({"name": "vm-stats", "cluster": "c-stats", "memory": "256MiB"},
                          state="stopped")
    with api.engine.store.transaction() as session:
        vm_id = find(session, Vm, "vm-stats").id
        stats_history.record_minute(session, "vm", [{"object_id": vm_id, "cpu_percent": 12.5}],
                                    datetime.now(UTC) - timedelta(minutes=3))
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    remote_answer = admin.stats.vm("vm-stats", since=since, period="2h")
    assert remote_answer == api.engine.stats.vm("vm-stats", since=since, period="2h")
    assert [s["cpu_percent"] for s in remote_answer["samples"]] == [12.5]
    assert remote_answer["current"] == {}  # a stopped VM has no current figures
    with pytest.raises(InvalidSpec) as invalid:
        admin.stats.vm("vm-stats", period="a while")
    assert invalid.value.field == "period"
    with pytest.raises(VmNotFound, match="VM 'nope' does not exist"):
        admin.stats.vm("nope")
