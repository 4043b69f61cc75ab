"""Snapshots locked by a create or revert whose caller died: the loop settles them from
what the agent reports (FakeAgent keeps each running VM's chains)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import FakeAgent

from engine_lib.loop import snapshot_reconcile
from engine_lib.model import Snapshot, Vm, VmDevice, Volume, utcnow
from engine_lib.protocol.errors import AgentUnreachable, Conflict
from engine_lib.services import snapshots

SPEC = {"name": "vm1", "cluster": "c1", "memory": 256,
        "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"}]}
LATER = utcnow() + timedelta(hours=1)


class Died(BaseException):
    """The caller's process ended mid-operation (nothing of it runs on)."""


@pytest.fixture
def agent(engine, cluster, agents):
    agent = agents["10.0.0.1"] = FakeAgent("h1")
    info = agent.host_info
    agent.host_info = lambda timeout=None: {**info(), "storage_domains": [
        {"name": "data", "path": "/srv/data", "available": True, "free_mib": 4096}]}
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    engine.vms.ensure(SPEC, state="running")
    return agent


def top(engine) -> str:
    with engine.store.transaction(commit=False) as session:
        vm = session.query(Vm).filter_by(name="vm1").one()
        return session.query(VmDevice).filter_by(vm_id=vm.id, name="root").one() \
            .spec["volume_id"]


def rows(engine) -> tuple[list[tuple[str, str, str]], set[str]]:
    with engine.store.transaction(commit=False) as session:
        return ([(s.id, s.status, s.operation) for s in session.query(Snapshot).all()],
                {v.id for v in session.query(Volume).all()})


def lost_answer(agent, *, carried_out: bool):
    real = agent.create_snapshot

    def create_snapshot(vm_id, body):
        if carried_out:
            real(vm_id, body)
        raise AgentUnreachable("agent h1 unreachable: no answer within 600 s", cause="timeout")
    agent.create_snapshot = create_snapshot


def test_a_snapshot_libvirt_took_is_finished(engine, agent):
    old_top = top(engine)
    lost_answer(agent, carried_out=True)
    with pytest.raises(AgentUnreachable):
        snapshots.create(engine, "vm1")
    (snap_id, status, operation), = rows(engine)[0]
    assert (status, operation) == ("locked", "create")
    assert snapshot_reconcile.reconcile(engine) == []  # not stale yet: its caller may live
    assert snapshot_reconcile.reconcile(engine, now=LATER) == [snap_id]
    snap = snapshots.get(engine, "vm1", snap_id)
    assert snap["status"] == "ok" and snap["disks"][0]["volume_id"] == old_top
    new_top = top(engine)
    assert new_top != old_top and agent.chains(engine.vms.info("vm1")[0]["id"])["disks"][0][
        "chain"][0].endswith(new_top)
    assert "overlay" not in str(snapshots.list_for(engine, "vm1"))


def test_a_snapshot_libvirt_never_took_is_removed_with_its_files(engine, agent):
    before_top, (_, volumes) = top(engine), rows(engine)
    lost_answer(agent, carried_out=False)
    with pytest.raises(AgentUnreachable):
        snapshots.create(engine, "vm1", use_memory=True)
    with pytest.raises(Conflict, match="locked by a running create"):
        snapshots.create(engine, "vm1")
    (snap_id, _, _), = rows(engine)[0]
    assert snapshot_reconcile.reconcile(engine, now=LATER) == [snap_id]
    assert rows(engine) == ([], volumes) and top(engine) == before_top
    assert len(agent.deleted_volumes) == 2  # the overlay and the memory file


def test_a_host_that_does_not_answer_is_asked_next_round(engine, agent):
    lost_answer(agent, carried_out=True)
    with pytest.raises(AgentUnreachable):
        snapshots.create(engine, "vm1")
    agent.reachable = False
    assert snapshot_reconcile.reconcile(engine, now=LATER) == []
    agent.reachable = True
    assert len(snapshot_reconcile.reconcile(engine, now=LATER)) == 1


def test_a_revert_whose_caller_died_is_undone_and_a_start_waits_for_it(engine, agent):
    snap = snapshots.create(engine, "vm1")
    engine.vms.ensure(SPEC, state="stopped")
    before_top, (_, volumes) = top(engine), rows(engine)

    def die(volume, parent):
        raise Died()
    agent.create_overlay = die
    with pytest.raises(Died):
        snapshots.revert(engine, "vm1", snap["id"])
    assert rows(engine)[0] == [(snap["id"], "locked", "revert")]
    with pytest.raises(Conflict, match="cannot start it: snapshot .* locked by a running revert"):
        engine.vms.ensure(SPEC, state="running")
    assert snapshot_reconcile.reconcile(engine, now=LATER) == [snap["id"]]
    assert rows(engine) == ([(snap["id"], "ok", "")], volumes) and top(engine) == before_top
    assert engine.vms.ensure(SPEC, state="running").entity["status"] == "Up"
