"""Deleting a snapshot merges the volume above the one it froze: the rows after
deleting the first, the middle and the last snapshot of a three-deep chain, live
and offline, and the lock and retry rules."""

import pytest
from sqlalchemy import select
from sqlalchemy.orm.attributes import flag_modified
from test_vm_devices import VM, DeviceAgent

from engine_lib.model import Host, Snapshot, Volume
from engine_lib.protocol.errors import AgentUnreachable, Conflict, KestrelError, NotFound
from engine_lib.protocol.statuses import HostStatus, VmStatus
from engine_lib.services import snapshot_merge, volumes
from engine_lib.services.common import get_vm


class MergeAgent(DeviceAgent):
    """Records merges and deletions; ``fail_merge`` makes the next merge job fail."""

    fail_merge = False
    skip_before_fail = 0  # merges that succeed before the failing one

    def start_merge(self, vm_id, body):
        answer = super().start_merge(vm_id, body)
        self._maybe_fail(answer)
        return answer

    def merge_volumes(self, base, top, child, chain):
        answer = super().merge_volumes(base, top, child, chain)
        self._maybe_fail(answer)
        return answer

    def _maybe_fail(self, answer):
        if self.fail_merge and self.skip_before_fail:
            self.skip_before_fail -= 1
        elif self.fail_merge:
            self.fail_merge = False
            self._jobs()[answer["job"]].update(
                status="failed", result=None,
                error=KestrelError("qemu-img commit failed: No space left").to_dict())


@pytest.fixture
def chain(engine, cluster, agents):
    """vm1's root disk R with snapshots s1 (froze R), s2 (froze A), s3 (froze B):
    the chain is T -> B -> A -> R, top first."""
    agent = agents["10.0.0.1"] = MergeAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure(VM)
    with engine.store.transaction() as session:
        session.scalars(select(Host)).one().status = HostStatus.UP
        vm = get_vm(session, "vm1")
        device = next(d for d in vm.devices if d.name == "root")
        root = session.get(Volume, device.spec["volume_id"])
        ids = {"R": root.id}
        parent = root
        for name, snap in (("A", "s1"), ("B", "s2"), ("T", "s3")):
            volume = Volume(id=f"vol-{name}", image_id=root.image_id,
                            storage_domain="data", parent=parent, format="qcow2",
                            size_mib=root.size_mib)
            session.add(volume)
            session.add(Snapshot(id=snap, vm_id=vm.id, status="ok", description=snap,
                                 disks=[{"disk": "root", "image_id": root.image_id,
                                         "volume_id": parent.id}]))
            ids[name] = volume.id
            parent = volume
        session.flush()
        device.spec = {**device.spec, "volume_id": parent.id, "chain": volumes.chain_refs(parent)}
        flag_modified(device, "spec")
    return agent, ids


def _state(engine):
    """(the disk's chain top first, {snapshot: frozen volume})."""
    with engine.store.transaction(commit=False) as session:
        vm = get_vm(session, "vm1")
        device = next(d for d in vm.devices if d.name == "root")
        top = session.get(Volume, device.spec["volume_id"])
        chain = [top.id, *(v.id for v in top.chain())]
        assert [c["volume_id"] for c in device.spec.get("chain", [])] == chain[1:]
        snaps = {s.id: s.disks[0]["volume_id"] for s in session.scalars(
            select(Snapshot).where(Snapshot.vm_id == vm.id))}
        gone = {v for v in ("vol-A", "vol-B", "vol-T") if session.get(Volume, v) is None}
        return chain, snaps, gone


def _run_on(engine, status):
    with engine.store.transaction() as session:
        vm = get_vm(session, "vm1")
        vm.status = status
        vm.run_on_host = session.scalars(select(Host)).one()


@pytest.mark.parametrize("live", [False, True], ids=["offline", "live"])
def test_delete_first_middle_last_of_a_three_deep_chain(engine, chain, live):
    agent, ids = chain
    if live:
        _run_on(engine, VmStatus.UP)
    r = ids["R"]

    result = snapshot_merge.delete(engine, "vm1", "s2")  # the middle: B into A, T onto A
    assert result["disks"] == [{"disk": "root", "merged": "vol-B", "into": "vol-A"}]
    assert _state(engine) == (["vol-T", "vol-A", r], {"s1": r, "s3": "vol-A"}, {"vol-B"})

    snapshot_merge.delete(engine, "vm1", "s1")  # the first: A into R, T onto R
    assert _state(engine) == (["vol-T", r], {"s3": r}, {"vol-A", "vol-B"})

    snapshot_merge.delete(engine, "vm1", "s3")  # the last: the active layer T into R
    assert _state(engine) == ([r], {}, {"vol-A", "vol-B", "vol-T"})
    assert [d["volume"] for d in agent.deleted_volumes] == ["vol-B", "vol-A", "vol-T"]

    if live:
        calls = [body for kind, _, body in agent.merges]
        assert [(b["base"]["volume"], b["top"]["volume"], b["top_is_active"])
                for b in calls] == [("vol-A", "vol-B", False), (r, "vol-A", False),
                                    (r, "vol-T", True)]
        # The metadata handed over describes the chain after the merge.
        assert "vol-B" not in calls[0]["metadata"] and "vol-A" in calls[0]["metadata"]
        assert "vol-T" not in calls[2]["metadata"] and r in calls[2]["metadata"]
    else:
        assert [(m[1]["volume"], m[2]["volume"], m[3] and m[3]["volume"],
                 [c["volume"] for c in m[4]]) for m in agent.merges] == [
            ("vol-A", "vol-B", "vol-T", [r]), (r, "vol-A", "vol-T", []),
            (r, "vol-T", None, [])]


def test_a_failed_merge_unlocks_and_changes_no_row(engine, chain):
    agent, ids = chain
    agent.fail_merge = True
    before = _state(engine)
    with pytest.raises(KestrelError, match="No space left"):
        snapshot_merge.delete(engine, "vm1", "s2")
    assert _state(engine) == before
    assert agent.deleted_volumes == []
    with engine.store.transaction(commit=False) as session:
        assert session.get(Snapshot, "s2").status == "ok"
    snapshot_merge.delete(engine, "vm1", "s2")  # and it can be retried
    assert _state(engine)[2] == {"vol-B"}


def test_locks_states_and_unknown_snapshots_are_refused(engine, chain):
    with engine.store.transaction() as session:
        session.get(Snapshot, "s1").status = "locked"
        session.get(Snapshot, "s1").operation = "create"
    with pytest.raises(Conflict, match="create of snapshot s1"):
        snapshot_merge.delete(engine, "vm1", "s2")
    with engine.store.transaction() as session:
        session.get(Snapshot, "s1").status = "ok"
    _run_on(engine, VmStatus.MIGRATING_FROM)
    with pytest.raises(Conflict, match="VM 'vm1' is MigratingFrom"):
        snapshot_merge.delete(engine, "vm1", "s2")
    with pytest.raises(NotFound):
        snapshot_merge.delete(engine, "vm1", "nope")


def test_reconcile_finishes_a_merge_whose_engine_died_after_the_rows(engine, chain):
    """The rows of the merge were committed, the engine died before deleting C's file
    and the snapshot: the reconcile deletes the file and the row, merging nothing more."""
    agent, ids = chain
    original = snapshot_merge._delete_file

    def crash(agent_, entry):
        raise SystemExit("engine killed")

    snapshot_merge._delete_file = crash
    try:
        with pytest.raises(SystemExit):
            snapshot_merge.delete(engine, "vm1", "s2")
    finally:
        snapshot_merge._delete_file = original
    with engine.store.transaction() as session:  # an engine dying leaves the lock
        snap = session.get(Snapshot, "s2")
        snap.status, snap.operation = "locked", "merge"
    merges = len(agent.merges)
    seen: dict = {}
    assert snapshot_merge.reconcile(engine, seen) == []  # first seen: maybe still running
    assert snapshot_merge.reconcile(engine, seen) == ["s2"]
    assert len(agent.merges) == merges  # nothing merged twice
    assert [d["volume"] for d in agent.deleted_volumes] == ["vol-B"]
    assert _state(engine) == (["vol-T", "vol-A", ids["R"]], {"s1": ids["R"], "s3": "vol-A"},
                              {"vol-B"})


def test_reconcile_reissues_a_live_merge_whose_agent_died(engine, chain):
    """The agent died with the merge request: the lock stays, and once the row has not
    moved for a round the reconcile posts the same merge again (the agent adopts a block
    job still running) and finishes the rows."""
    agent, ids = chain
    _run_on(engine, VmStatus.UP)

    def dies(vm_id, body):
        agent.merges = getattr(agent, "merges", []) + [("lost", vm_id, body)]
        raise AgentUnreachable("agent h1 unreachable: connection reset")

    agent.start_merge = dies
    with pytest.raises(AgentUnreachable):
        snapshot_merge.delete(engine, "vm1", "s3")
    with engine.store.transaction(commit=False) as session:
        assert (session.get(Snapshot, "s3").status,
                session.get(Snapshot, "s3").operation) == ("locked", "merge")
    with pytest.raises(Conflict, match="merge of snapshot s3"):
        snapshot_merge.delete(engine, "vm1", "s1")
    del agent.start_merge  # the agent is back
    assert engine.snapshot_merge.reconcile() == []
    assert engine.snapshot_merge.reconcile() == ["s3"]
    assert [m[0] for m in agent.merges] == ["lost", "live"]
    assert agent.merges[0][2] == agent.merges[1][2]  # the same merge, asked again
    assert _state(engine) == (["vol-B", "vol-A", ids["R"]],
                              {"s1": ids["R"], "s2": "vol-A"}, {"vol-T"})


def test_a_merge_whose_agent_restarted_is_posted_again_not_marked_failed(engine, chain):
    """The agent restarted while QEMU merged: it no longer knows the job. The delete posts
    the same merge again (the real agent adopts QEMU's block job) and ends; when the agent
    keeps losing it, the lock stays for the reconcile instead of the snapshot going back
    to ok, which would let a revert use a volume QEMU may have merged away."""
    agent, ids = chain
    _run_on(engine, VmStatus.UP)
    lost = {"left": 1}
    posted = agent.start_merge

    def restarts(vm_id, body):
        answer = posted(vm_id, body)
        if lost["left"]:
            lost["left"] -= 1
            del agent._jobs()[answer["job"]]  # the restarted agent's registry is empty
        return answer

    agent.start_merge = restarts
    assert snapshot_merge.delete(engine, "vm1", "s3")["live"]
    assert [m[0] for m in agent.merges] == ["live", "live"]
    assert agent.merges[0][2] == agent.merges[1][2]  # the same merge, asked again
    assert _state(engine)[2] == {"vol-T"}

    lost["left"] = snapshot_merge.LOST_JOB_POSTS
    with pytest.raises(KestrelError, match="no longer knows job"):
        snapshot_merge.delete(engine, "vm1", "s2")
    with engine.store.transaction(commit=False) as session:
        snap = session.get(Snapshot, "s2")
        assert (snap.status, snap.operation) == ("locked", "merge")
    assert _state(engine)[2] == {"vol-T"}  # no row moved: the reconcile settles it


def test_an_offline_merge_whose_agent_restarted_is_left_to_the_reconcile(engine, chain):
    """The lost agent's qemu-img may still be committing: posting it again would race it,
    so the lock stays and the reconcile posts it once the job is no longer running."""
    agent, ids = chain
    posted = agent.merge_volumes

    def restarts(base, top, child, below):
        answer = posted(base, top, child, below)
        del agent._jobs()[answer["job"]]
        return answer

    agent.merge_volumes = restarts
    with pytest.raises(KestrelError, match="no longer knows job"):
        snapshot_merge.delete(engine, "vm1", "s3")
    assert [m[0] for m in agent.merges] == ["offline"]  # not posted again
    with engine.store.transaction(commit=False) as session:
        assert (session.get(Snapshot, "s3").status,
                session.get(Snapshot, "s3").operation) == ("locked", "merge")
    del agent.merge_volumes
    assert engine.snapshot_merge.reconcile() == []
    assert engine.snapshot_merge.reconcile() == ["s3"]
    assert _state(engine)[2] == {"vol-T"}


def test_a_merge_failing_after_one_disk_leaves_the_snapshot_illegal_and_retry_ends_it(
        engine, chain):
    """s1 also froze a second disk: its merge fails after root's was done. Root's rows
    stay merged, the snapshot is illegal (no longer a restore point), and deleting it
    again merges only the second disk."""
    agent, ids = chain
    data = engine.vm_devices.disk("vm1", "data", settings={
        "size": "1GiB", "storage_domain": "data"}).entity
    with engine.store.transaction() as session:
        vm = get_vm(session, "vm1")
        base = session.get(Volume, data["volume_id"])
        session.add(Volume(id="vol-D", image_id=base.image_id, storage_domain="data",
                           parent=base, format="qcow2", size_mib=base.size_mib))
        session.flush()
        device = next(d for d in vm.devices if d.name == "data")
        device.spec = {**device.spec, "volume_id": "vol-D",
                       "chain": volumes.chain_refs(session.get(Volume, "vol-D"))}
        flag_modified(device, "spec")
        snap = session.get(Snapshot, "s1")
        snap.disks = [*snap.disks, {"disk": "data", "image_id": base.image_id,
                                    "volume_id": base.id}]
    agent.fail_merge, agent.skip_before_fail = True, 1
    with pytest.raises(KestrelError, match="No space left"):
        snapshot_merge.delete(engine, "vm1", "s1")
    with engine.store.transaction(commit=False) as session:
        assert session.get(Snapshot, "s1").status == "illegal"
        assert session.get(Volume, "vol-A") is None  # root's merge stays done
        assert session.get(Volume, "vol-D") is not None
    merges = len(agent.merges)
    snapshot_merge.delete(engine, "vm1", "s1")
    assert [m[2]["volume"] for m in agent.merges[merges:]] == ["vol-D"]
    assert [d["volume"] for d in agent.deleted_volumes] == ["vol-A", "vol-A", "vol-D"]
    with engine.store.transaction(commit=False) as session:
        assert session.get(Snapshot, "s1") is None
        assert session.get(Volume, "vol-D") is None
