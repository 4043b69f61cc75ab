"""Encrypted live migration, the engine's and the agent's choices: the cluster option,
the destination URI (qemu+tls vs qemu+tcp) and libvirt's VIR_MIGRATE_TLS flag (fake
agents; the real TLS migration between lab hosts is tests/system/test_migration_tls.py)."""

import json

import libvirt
import pytest
from conftest import FakeAgent

from engine_lib.agent.api import Api
from engine_lib.agent.migration import migrate_flags
from engine_lib.protocol.errors import InvalidSpec, MigrationFailed, NotFound
from engine_lib.services.migrations import destination_uri

REFUSED = "unable to connect to server at '10.0.0.2:16514': Connection refused"


class MigratingAgent(FakeAgent):
    """Records what the engine asks the source to do; the migration then fails as libvirt
    fails against a destination whose libvirtd does not listen on TLS."""

    asked: list[dict] = []

    def prepare_incoming(self, xml):
        return {"paths": {}}

    def migrate_vm(self, vm_id, destination_uri, paths, policy="minimal_downtime",
                   bandwidth_mibps=None, tls=False):
        MigratingAgent.asked.append({"uri": destination_uri, "tls": tls})
        return {"status": "running"}

    def migration(self, vm_id):
        return {"id": vm_id, "status": "failed", "error": REFUSED}

    def vm_status(self, vm_id):
        report = super().vm_status(vm_id)
        return {**report, "state": "running"}

    def cancel_migration(self, vm_id):
        raise NotFound("migration of VM", vm_id)


@pytest.fixture
def running(engine, cluster, agents):
    MigratingAgent.asked = []
    for i in (1, 2):
        agents[f"10.0.0.{i}"] = MigratingAgent(f"h{i}")
        engine.hosts.ensure(f"h{i}", address=f"10.0.0.{i}", cluster=cluster)
    return engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256},
                             state="running").entity


def test_the_uri_names_tls_only_for_an_encrypted_migration():
    assert destination_uri("10.0.0.2", False) == "qemu+tcp://10.0.0.2/system"
    assert destination_uri("10.0.0.2", True) == "qemu+tls://10.0.0.2/system"
    assert destination_uri("h2.example.org", True) == "qemu+tls://h2.example.org/system"
    assert destination_uri("fd00::2", True) == "qemu+tls://[fd00::2]/system"


def test_vir_migrate_tls_is_set_only_when_asked():
    assert migrate_flags("minimal_downtime", True) & libvirt.VIR_MIGRATE_TLS
    assert not migrate_flags("minimal_downtime", False) & libvirt.VIR_MIGRATE_TLS
    both = migrate_flags("post_copy", True)
    assert both & libvirt.VIR_MIGRATE_POSTCOPY and both & libvirt.VIR_MIGRATE_TLS
    assert migrate_flags("minimal_downtime", True) & libvirt.VIR_MIGRATE_PEER2PEER


def test_new_clusters_encrypt_unless_told_and_the_option_is_idempotent(engine, cluster):
    assert engine.clusters.get(cluster)["migration_encrypted"] is True
    created = engine.clusters.ensure("c2", migration_encrypted=False)
    assert created.entity["migration_encrypted"] is False
    outcome = engine.clusters.ensure(cluster, migration_encrypted=False, check_mode=True)
    assert outcome.changed and engine.clusters.get(cluster)["migration_encrypted"] is True
    outcome = engine.clusters.ensure(cluster, migration_encrypted=False)
    assert outcome.changed
    assert (outcome.diff["before"]["migration_encrypted"],
            outcome.diff["after"]["migration_encrypted"]) == (True, False)
    assert not engine.clusters.ensure(cluster, migration_encrypted=False).changed
    # Omitted, an existing cluster keeps its choice: the default is for new clusters.
    assert not engine.clusters.ensure(cluster, migration_policy="minimal_downtime").changed
    assert engine.clusters.get(cluster)["migration_encrypted"] is False


def test_a_non_boolean_is_refused_naming_the_option(engine, cluster):
    with pytest.raises(InvalidSpec) as info:
        engine.clusters.ensure(cluster, migration_encrypted="yes")
    assert info.value.field == "migration_encrypted"
    assert engine.clusters.get(cluster)["migration_encrypted"] is True


def test_check_mode_says_whether_the_migration_would_be_encrypted(engine, cluster, running):
    engine.clusters.ensure(cluster, migration_encrypted=False)
    assert engine.migrations.migrate("vm1", check_mode=True).entity["encrypted"] is False
    engine.clusters.ensure(cluster, migration_encrypted=True)
    assert engine.migrations.migrate("vm1", check_mode=True).entity["encrypted"] is True
    assert MigratingAgent.asked == []


def test_an_encrypted_migration_asks_for_tls_and_a_refusal_keeps_the_vm_on_its_source(
        engine, cluster, running):
    engine.clusters.ensure(cluster, migration_encrypted=True)
    destination = ({"h1", "h2"} - {running["host"]}).pop()
    with pytest.raises(MigrationFailed) as info:
        engine.migrations.migrate("vm1")
    assert MigratingAgent.asked == [
        {"uri": f"qemu+tls://10.0.0.{destination[1]}/system", "tls": True}]
    assert REFUSED in info.value.message
    assert "encrypts migrations" in info.value.message and "16514" in info.value.message
    vm = engine.vms.info("vm1")[0]
    assert (vm["status"], vm["host"]) == ("Up", running["host"])
    record = engine.migrations.history("vm1")[0]
    assert (record["status"], record["encrypted"]) == ("failed", True)


def test_a_plain_migration_asks_for_tcp_and_no_tls_hint(engine, cluster, running):
    engine.clusters.ensure(cluster, migration_encrypted=False)
    with pytest.raises(MigrationFailed) as info:
        engine.migrations.migrate("vm1")
    assert MigratingAgent.asked[0]["uri"].startswith("qemu+tcp://")
    assert MigratingAgent.asked[0]["tls"] is False
    assert "encrypts migrations" not in info.value.message
    assert engine.migrations.history("vm1")[0]["encrypted"] is False


class _Outgoing:
    """The agent's Migrations as the API sees it: records start_outgoing calls."""

    def __init__(self):
        self.calls = []

    def start_outgoing(self, vm_id, uri, paths, policy, bandwidth, *, tls=False):
        self.calls.append({"uri": uri, "tls": tls})
        return {"status": "running"}


@pytest.fixture
def agent_api():
    hv = type("Hypervisor", (), {"migrations": _Outgoing()})()
    return Api(config=None, hypervisor_factory=lambda _config: hv), hv.migrations.calls


def _migrate(api, body):
    vm = "6a1d2d9e-0b7e-4a57-9d54-5b1c6c1f0a01"
    return api.handle("POST", f"/api/v1/vms/{vm}/migrate", {}, json.dumps(body).encode())


def test_the_agent_passes_tls_on_and_refuses_a_non_boolean(agent_api):
    api, calls = agent_api
    uri = "qemu+tls://10.0.0.2/system"
    assert _migrate(api, {"destination_uri": uri, "tls": True})[0] == 200
    assert _migrate(api, {"destination_uri": uri})[0] == 200
    assert calls == [{"uri": uri, "tls": True}, {"uri": uri, "tls": False}]
    status, doc = _migrate(api, {"destination_uri": uri, "tls": "yes"})
    assert status == 400 and doc["error"]["details"]["field"] == "tls"
    assert len(calls) == 2
