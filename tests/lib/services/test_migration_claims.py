"""A migration claims its destination from the moment it is recorded until its outcome is."""

import pytest
from conftest import FakeAgent

from engine_lib.model import Migration
from engine_lib.protocol.errors import NoValidHost
from engine_lib.services import migrations as migrations_service
from engine_lib.services.scheduling_facts import host_claims


class SlowMove(FakeAgent):
    """A source whose migration reports progress ``rounds`` times, then succeeds."""

    def __init__(self, name, rounds, memory_mib):
        super().__init__(name, memory_mib=memory_mib)
        self.rounds = rounds

    def prepare_incoming(self, xml):
        return {"paths": {}}

    def migrate_vm(self, vm_id, destination_uri, paths, policy="minimal_downtime",
                   bandwidth_mibps=None, tls=False):
        return {"status": "running"}

    def migration(self, vm_id):
        if self.rounds > 0:
            self.rounds -= 1
            return {"id": vm_id, "status": "running", "progress": {"data_remaining": 1}}
        return {"id": vm_id, "status": "succeeded", "downtime_ms": 40}

    def vm_status(self, vm_id):
        return {**super().vm_status(vm_id), "state": "running"}


@pytest.fixture
def moving(engine, cluster, agents, monkeypatch):
    """vm1 (768 MiB) runs on h1 and is about to move to h2; both hosts have 1024 MiB."""
    monkeypatch.setattr(migrations_service, "POLL", 0.01)
    agents["10.0.0.1"] = SlowMove("h1", rounds=2, memory_mib=1024)
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    vm = engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": "768MiB"},
                           state="running").entity
    agents["10.0.0.2"] = destination = SlowMove("h2", rounds=0, memory_mib=1024)
    engine.hosts.ensure("h2", address="10.0.0.2", cluster=cluster)
    destination.vms[vm["id"]] = "Up"  # the incoming copy
    destination.last_xml = agents["10.0.0.1"].last_xml
    engine.vms.ensure({"name": "vm2", "cluster": cluster, "memory": "512MiB"})
    return vm


def test_a_start_during_a_migration_does_not_take_the_destinations_memory(engine, moving):
    seen = []

    def start_vm2_meanwhile(_progress):
        if seen:
            return
        with pytest.raises(NoValidHost) as info:
            engine.vms.ensure({"name": "vm2"}, state="running")
        seen.append(info.value.message)

    outcome = engine.migrations.migrate("vm1", host="h2", progress=start_vm2_meanwhile)

    assert outcome.entity["status"] == "succeeded"
    assert "h2" in seen[0] and "768 MiB claimed" in seen[0]
    # The outcome released h1: vm2 starts there now.
    assert engine.vms.ensure({"name": "vm2"}, state="running").entity["host"] == "h1"


def test_the_claim_is_counted_while_the_row_runs_and_released_with_its_outcome(
        engine, moving):
    with engine.store.transaction() as session:
        hosts = {h["name"]: h["id"] for h in engine.hosts.info()}
        session.add(Migration(vm_id=moving["id"], vm_name="vm1", source="h1", destination="h2",
                              status="running", progress={}, error="", duration_s=0.0))
        session.flush()
        claims = host_claims(session)
        assert (claims[hosts["h1"]].memory, claims[hosts["h1"]].vms) == (768, 1)
        assert (claims[hosts["h2"]].memory, claims[hosts["h2"]].vcpus,
                claims[hosts["h2"]].vms) == (768, 1, 1)
        session.query(Migration).update({"status": "failed"})
        assert hosts["h2"] not in host_claims(session)
