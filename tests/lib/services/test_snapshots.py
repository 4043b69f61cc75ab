"""Taking, listing and reverting snapshots: the engine's rows and calls, with FakeAgents
(the live snapshot itself is the agent's, tested on real libvirt)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

import pytest
from conftest import FakeAgent

from engine_lib.model import Snapshot, Vm, VmDevice, Volume
from engine_lib.protocol.errors import AgentError, Conflict, InvalidSpec, NotFound
from engine_lib.services import snapshots

SPEC = {"name": "vm1", "cluster": "c1", "memory": 256,
        "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"},
                  {"name": "logs", "size": "1GiB", "storage_domain": "data"}]}


@pytest.fixture
def agent(engine, cluster, agents):
    """h1, Up, with the 'data' domain available; vm1 running on it."""
    agent = agents["10.0.0.1"] = FakeAgent("h1")
    info = agent.host_info
    agent.host_info = lambda timeout=None: {**info(), "storage_domains": [
        {"name": "data", "path": "/srv/data", "available": True, "free_mib": 4096}]}
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    engine.vms.ensure(SPEC, state="running")
    return agent


def disks(engine, vm="vm1") -> dict[str, dict]:
    """disk name -> its spec (top volume_id, chain)."""
    with engine.store.transaction(commit=False) as session:
        found = session.query(Vm).filter_by(name=vm).one()
        return {d.name: dict(d.spec) for d in session.query(VmDevice).filter_by(vm_id=found.id)
                if d.type == "disk"}


def volume_ids(engine) -> set[str]:
    with engine.store.transaction(commit=False) as session:
        return {v.id for v in session.query(Volume).all()}


def set_status(engine, status, vm="vm1"):
    with engine.store.transaction() as session:
        session.query(Vm).filter_by(name=vm).one().status = status


def test_a_running_vm_snapshot_moves_each_disk_top_onto_a_new_overlay(engine, agent):
    before = disks(engine)
    snap = snapshots.create(engine, "vm1", description="before upgrade")
    assert (snap["status"], snap["quiesced"], snap["memory"]) == ("ok", True, False)
    assert {d["disk"]: d["volume_id"] for d in snap["disks"]} == \
        {name: spec["volume_id"] for name, spec in before.items()}
    (vm_id, body), = agent.snapshots_taken
    after = disks(engine)
    for disk in body["disks"]:
        name = next(n for n, s in before.items() if s["volume_id"] == disk["parent"]["volume"])
        # Same image, new volume on the frozen one; the spec's chain names the frozen one.
        assert disk["volume"]["image"] == before[name]["image_id"]
        assert after[name]["volume_id"] == disk["volume"]["volume"]
        assert after[name]["chain"][0]["volume_id"] == before[name]["volume_id"]
        # The agent sets metadata that already lists the new chain.
        assert f"volume='{disk['volume']['volume']}'" in body["metadata"]
        assert f"parent='{before[name]['image_id']}/{before[name]['volume_id']}'" \
            in body["metadata"]
    assert body["metadata"].startswith("<kestrel:vm ") and body["memory_volume"] is None
    with engine.store.transaction(commit=False) as session:
        assert {v.status for v in session.query(Volume).all()} == {"ok"}
    # A second snapshot stacks on the first; listing is oldest first.
    second = snapshots.create(engine, "vm1", description="second")
    assert [s["id"] for s in snapshots.list_for(engine, "vm1")] == [snap["id"], second["id"]]
    assert len(disks(engine)["root"]["chain"]) == 2
    assert snapshots.get(engine, "vm1", snap["id"])["description"] == "before upgrade"


def test_quiesce_failure_and_memory_are_reported(engine, agent):
    agent.quiesce_fails = True
    snap = snapshots.create(engine, "vm1", use_memory=True)
    assert (snap["quiesced"], snap["memory"], snap["use_memory"]) == (False, True, True)
    memory = agent.snapshots_taken[-1][1]["memory_volume"]
    assert memory["domain"] == "data"


def test_a_stopped_vm_is_snapshotted_through_overlays_on_a_host_that_sees_the_domain(
        engine, agent):
    engine.vms.ensure(SPEC, state="stopped")
    before = disks(engine)
    snap = snapshots.create(engine, "vm1")
    assert snap["quiesced"] is None and len(agent.overlays) == 2
    for volume, parent in agent.overlays:
        name = next(n for n, s in before.items() if s["volume_id"] == parent["volume"])
        assert disks(engine)[name]["volume_id"] == volume["volume"]
    with pytest.raises(InvalidSpec, match="use_memory.*only a running VM"):
        snapshots.create(engine, "vm1", use_memory=True)


@pytest.mark.parametrize("status", ["MigratingFrom", "MigratingTo", "WaitForLaunch",
                                    "PoweringUp", "SavingState", "RestoringState"])
def test_a_vm_between_states_is_refused_naming_its_status(engine, agent, status):
    rows = volume_ids(engine)
    set_status(engine, status)
    with pytest.raises(Conflict, match=f"VM 'vm1' is {status}"):
        snapshots.create(engine, "vm1")
    assert volume_ids(engine) == rows and snapshots.list_for(engine, "vm1") == []
    assert not getattr(agent, "snapshots_taken", [])


def test_bad_input_names_the_field(engine, agent):
    with pytest.raises(InvalidSpec, match="use_memory"):
        snapshots.create(engine, "vm1", use_memory="yes")
    with pytest.raises(InvalidSpec, match="description"):
        snapshots.create(engine, "vm1", description=5)
    with pytest.raises(InvalidSpec, match="snapshot_id"):
        snapshots.revert(engine, "vm1", "")


def test_an_agent_failure_leaves_the_old_chain_and_no_rows(engine, agent):
    rows, before = volume_ids(engine), disks(engine)
    vm_id = engine.vms.info("vm1")[0]["id"]
    agent.snapshot_errors = {vm_id: AgentError("no space left on storage domain 'data'")}
    with pytest.raises(AgentError, match="no space left"):
        snapshots.create(engine, "vm1")
    assert volume_ids(engine) == rows and disks(engine) == before
    assert snapshots.list_for(engine, "vm1") == []
    snapshots.create(engine, "vm1")  # nothing left locked


def test_two_snapshots_of_one_vm_at_once_one_conflict(engine, agent):
    """Eight callers at once: one reaches the agent, seven get a Conflict naming it."""
    release, inside = threading.Event(), []
    real = agent.create_snapshot

    def slow(vm_id, body):
        inside.append(body["snapshot"])
        assert release.wait(10), "the lock let a second snapshot through"
        return real(vm_id, body)

    agent.create_snapshot = slow
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(snapshots.create, engine, "vm1") for _ in range(8)]
        conflicts = []
        for future in as_completed(futures, timeout=60):
            if future.exception() is not None:
                conflicts.append(future.exception())
            if len(conflicts) == 7:
                release.set()
    assert all(isinstance(e, Conflict) and "locked by a running create" in e.message
               for e in conflicts), conflicts
    assert len(inside) == 1 and [s["id"] for s in snapshots.list_for(engine, "vm1")] == inside


def test_a_running_vm_revert_is_refused_naming_its_status(engine, agent):
    snap = snapshots.create(engine, "vm1")
    with pytest.raises(Conflict, match="VM 'vm1' is Up: stop it first"):
        snapshots.revert(engine, "vm1", snap["id"])
    set_status(engine, "Paused")
    with pytest.raises(Conflict, match="VM 'vm1' is Paused: stop it first"):
        snapshots.revert(engine, "vm1", snap["id"])


def test_revert_discards_what_is_above_and_newer_snapshots_and_can_repeat(engine, agent):
    base = disks(engine)
    first = snapshots.create(engine, "vm1", description="first")
    tops_after_first = {n: s["volume_id"] for n, s in disks(engine).items()}
    second = snapshots.create(engine, "vm1", description="second", use_memory=True)
    engine.vms.ensure(SPEC, state="stopped")
    agent.deleted_volumes.clear()
    result = snapshots.revert(engine, "vm1", first["id"])
    assert result["removed_snapshots"] == [second["id"]] and result["status"] == "ok"
    assert [s["id"] for s in snapshots.list_for(engine, "vm1")] == [first["id"]]
    now = disks(engine)
    for name, spec in now.items():
        # A new empty top on the frozen volume; the volumes above it are gone.
        assert spec["chain"][0]["volume_id"] == base[name]["volume_id"]
        assert spec["volume_id"] not in tops_after_first.values()
    deleted = {v["volume"] for v in agent.deleted_volumes}
    gone = set(tops_after_first.values()) | {d["volume_id"] for d in second["disks"]}
    assert gone <= deleted  # the files, and the second snapshot's memory
    assert volume_ids(engine).isdisjoint(gone - {v["volume_id"] for v in first["disks"]})
    assert len(deleted) == 5  # two disks x two volumes above, and the memory file
    # Reverting again works the same (the snapshot stays).
    again = snapshots.revert(engine, "vm1", first["id"])
    assert again["removed_snapshots"] == [] and disks(engine)["root"]["chain"] == \
        now["root"]["chain"]
    assert engine.vms.info("vm1")[0]["status"] == "Down"


def test_revert_gives_the_vm_its_settings_of_then_but_keeps_disks_and_nics(engine, agent):
    """As oVirt's and Proxmox's: memory, cpu and devices come back; a disk added since
    and the NICs' MACs stay. A setting no longer valid leaves them all, and says so."""
    snap = snapshots.create(engine, "vm1")
    engine.vms.ensure(SPEC, state="stopped")
    nics = engine.vms.info("vm1")[0]["nics"]
    engine.vms.ensure({**SPEC, "memory": 512, "cpu": {"sockets": 2}, "graphics": {"type": "vnc"},
                       "disks": [*SPEC["disks"], {"name": "data2", "size": "1GiB",
                                                  "storage_domain": "data"}]})
    result = snapshots.revert(engine, "vm1", snap["id"])
    assert (result["settings_restored"], result["settings_not_restored"]) == (True, "")
    vm = engine.vms.info("vm1")[0]
    assert (vm["memory_mib"], vm["cpu"]["sockets"]) == (256, 1)
    assert [d["name"] for d in vm["disks"]] == ["root", "logs", "data2"]
    assert vm["nics"] == nics
    with engine.store.transaction(commit=False) as session:
        found = session.query(Vm).filter_by(name="vm1").one()
        assert found.devices_of("graphics") == []
        # An ISO the snapshot's VM had was deleted since: nothing of the settings changes.
        with_cdrom = dict(session.get(Snapshot, snap["id"]).vm_config,
                          cdrom={"iso": "gone.iso"})
    with engine.store.transaction() as session:
        session.get(Snapshot, snap["id"]).vm_config = with_cdrom
    engine.vms.ensure({"name": "vm1", "memory": 384})
    result = snapshots.revert(engine, "vm1", snap["id"])
    assert not result["settings_restored"] and "gone.iso" in result["settings_not_restored"]
    assert engine.vms.info("vm1")[0]["memory_mib"] == 384


def test_revert_to_a_memory_snapshot_resumes_the_vm_and_keeps_the_memory(engine, agent):
    snap = snapshots.create(engine, "vm1", use_memory=True)
    memory = agent.snapshots_taken[-1][1]["memory_volume"]
    engine.vms.ensure(SPEC, state="stopped")
    result = snapshots.revert(engine, "vm1", snap["id"])
    started = result["started_vm"]
    assert started["status"] == "Up" and started["memory_volume"] is None
    (_xml, restored, keep), = agent.restores
    assert restored == memory and keep is True
    assert agent._target(memory) in agent.files  # the snapshot can be reverted to again
    engine.vms.ensure(SPEC, state="stopped")
    snapshots.revert(engine, "vm1", snap["id"])
    assert len(agent.restores) == 2 and engine.vms.info("vm1")[0]["status"] == "Up"


def test_a_snapshot_locked_by_another_operation_blocks_a_revert(engine, agent):
    snap = snapshots.create(engine, "vm1")
    engine.vms.ensure(SPEC, state="stopped")
    with engine.store.transaction() as session:
        row = session.get(Snapshot, snap["id"])
        row.status, row.operation = "locked", "merge"
    with pytest.raises(Conflict, match="locked by a running merge"):
        snapshots.revert(engine, "vm1", snap["id"])
    with pytest.raises(Conflict, match="locked by a running merge"):
        snapshots.create(engine, "vm1")


def test_an_unknown_snapshot_is_not_found_naming_it(engine, agent):
    engine.vms.ensure(SPEC, state="stopped")
    with pytest.raises(NotFound, match="snapshot of VM 'vm1' 'nope' does not exist"):
        snapshots.revert(engine, "vm1", "nope")
    with pytest.raises(NotFound, match="'nope'"):
        engine.snapshots.restore("vm1", "nope", check_mode=True)


def test_vm_info_lists_the_snapshots_and_the_facade_filters(engine, agent):
    first = snapshots.create(engine, "vm1", description="a")
    snapshots.create(engine, "vm1", description="b")
    listed = engine.vms.info("vm1")[0]["snapshots"]
    assert [s["description"] for s in listed] == ["a", "b"] and listed[0]["id"] == first["id"]
    assert [s["id"] for s in engine.snapshots.info("vm1", description="a")] == [first["id"]]
    assert engine.snapshots.info("vm1", snapshot_id=first["id"])[0]["description"] == "a"
    again = engine.snapshots.create("vm1", snapshot_id=first["id"])
    assert again.changed is False and again.entity["id"] == first["id"]
    with pytest.raises(NotFound, match="'nope'"):
        engine.snapshots.create("vm1", snapshot_id="nope")
    predicted = engine.snapshots.create("vm1", description="c", check_mode=True)
    assert predicted.changed and len(snapshots.list_for(engine, "vm1")) == 2


def test_removing_a_vm_deletes_its_snapshots_volumes_and_memory(engine, agent):
    before = volume_ids(engine)
    first = snapshots.create(engine, "vm1", use_memory=True)
    snapshots.create(engine, "vm1")
    memory = agent.snapshots_taken[0][1]["memory_volume"]
    engine.vms.ensure({"name": "vm1"}, state="absent")
    assert volume_ids(engine) == set()
    deleted = {v["volume"] for v in agent.deleted_volumes}
    frozen = {d["volume_id"] for d in first["disks"]}
    assert before <= deleted and frozen <= deleted and memory["volume"] in deleted
    assert len(deleted) == 7  # 2 disks x 3 volumes, and the memory


def test_a_merge_and_snapshots_of_one_vm_at_once_one_runs(engine, agent):
    """Deleting a snapshot takes the same per-VM lock as taking one: of four deletes and
    four creates at once, one reaches the agent and seven get a Conflict."""
    from engine_lib.services import snapshot_merge

    first = snapshots.create(engine, "vm1")
    release, inside = threading.Event(), []
    real_snapshot, real_merge = agent.create_snapshot, agent.start_merge

    def slow_snapshot(vm_id, body):
        inside.append(threading.get_ident())
        assert release.wait(10), "the lock let a second operation through"
        return real_snapshot(vm_id, body)

    def slow_merge(vm_id, body):
        inside.append(threading.get_ident())  # once per disk of the one merge
        assert release.wait(10), "the lock let a second operation through"
        return real_merge(vm_id, body)

    agent.create_snapshot, agent.start_merge = slow_snapshot, slow_merge
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(snapshots.create, engine, "vm1") for _ in range(4)]
        futures += [pool.submit(snapshot_merge.delete, engine, "vm1", first["id"])
                    for _ in range(4)]
        conflicts = []
        for future in as_completed(futures, timeout=60):
            if future.exception() is not None:
                conflicts.append(future.exception())
            if len(conflicts) == 7:
                release.set()
        release.set()
    assert all(isinstance(e, Conflict) for e in conflicts), conflicts
    assert len(set(inside)) == 1, inside
