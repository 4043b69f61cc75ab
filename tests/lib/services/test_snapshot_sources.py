"""VMs and template versions made from a snapshot: the settings when it was taken,
each disk's frozen volume copied through its chain (never the running top), the
snapshot locked while the copy runs, and bad or ambiguous names refused."""

import pytest
from conftest import FakeAgent
from sqlalchemy import select

from engine_lib.model import DeviceType, Snapshot, Template, Vm, Volume, new_id
from engine_lib.protocol.errors import AgentError, Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.statuses import VmStatus
from engine_lib.services import snapshot_sources, snapshots, volumes

SOURCE = {"name": "web", "cluster": "c1", "memory": "256MiB",
          "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data",
                     "bootable": True}],
          "nics": [{"name": "nic1", "network": "br0"}]}


class SnapAgent(FakeAgent):
    """Copies at once, noting the snapshot's status during each copy; ``fail`` fails it."""

    fail = False
    engine = None

    def copy_volume(self, source, chain, target):
        with self.engine.store.transaction(commit=False) as session:
            self.locked = [(s.status, s.operation) for s in session.scalars(select(Snapshot))]
        answer = super().copy_volume(source, chain, target)
        if self.fail:
            self._jobs()[answer["job"]].update(status="failed", error=AgentError(
                "qemu-img convert: No space left on device").to_dict())
        return answer


@pytest.fixture
def agent(engine, cluster, agents):
    agent = agents["10.0.0.1"] = SnapAgent("h1")
    agent.engine = engine
    info = agent.host_info
    agent.host_info = lambda timeout=None: {**info(), "storage_domains": [
        {"name": "data", "path": "/srv/data", "available": True, "free_mib": 4096}]}
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    return agent


@pytest.fixture
def web(engine, agent):
    """VM web on a base volume, snapshotted (memory 256 MiB then) by the snapshot
    service while it runs, with 512 MiB now."""
    engine.vms.ensure(SOURCE)
    with engine.store.transaction() as session:
        vm = session.scalars(select(Vm).where(Vm.name == "web")).one()
        device = vm.devices_of(DeviceType.DISK)[0]
        base = Volume(id=new_id(), image_id=new_id(), storage_domain="data", format="qcow2",
                      size_mib=1024)
        session.add(base)
        volume = session.get(Volume, device.spec["volume_id"])
        volume.parent = base
        device.spec = {**device.spec, "chain": volumes.chain_refs(volume)}
        base_id, frozen = base.id, volume.id
    engine.vms.ensure({"name": "web"}, state="running")
    snap = snapshots.create(engine, "web", description="before upgrade")
    engine.vms.ensure({"name": "web", "memory": "512MiB"})
    disk = engine.vms.info("web")[0]["disks"][0]
    assert snap["disks"][0]["volume_id"] == frozen != disk["volume_id"]
    agent.files = {f"data/{disk['image_id']}/{frozen}": b"frozen data",
                   f"data/{disk['image_id']}/{disk['volume_id']}": b"newer data"}
    return {"id": snap["id"], "frozen": frozen, "top": disk["volume_id"], "base": base_id}


def test_clone_from_a_running_vms_snapshot_copies_the_frozen_volume(engine, agent, web):
    # Settings beyond memory changed after the snapshot too: the clone has none of them.
    engine.vms.ensure({"name": "web", "graphics": {"type": "vnc"},
                       "cpu": {"mode": "host-model"}})
    vm = engine.vms.ensure({"name": "copy", "snapshot_vm": "web",
                            "snapshot_name": "before upgrade"}).entity
    (disk,) = vm["disks"]
    source, chain, target = agent.copies[-1]
    assert source["volume"] == web["frozen"] and [c["volume"] for c in chain] == [web["base"]]
    assert target["volume"] == disk["volume_id"] and "chain" not in disk
    assert agent.files[f"data/{disk['image_id']}/{disk['volume_id']}"] == b"frozen data"
    # The settings when the snapshot was taken; its own name and MAC.
    assert vm["memory_mib"] == 256 and vm["status"] == VmStatus.DOWN
    (nic,), (web_nic,) = vm["nics"], engine.vms.info("web")[0]["nics"]
    assert nic["mac"] != web_nic["mac"]
    with engine.store.transaction(commit=False) as session:
        copy = session.scalars(select(Vm).where(Vm.name == "copy")).one()
        assert (copy.cpu_mode or None, copy.devices_of(DeviceType.GRAPHICS)) == (None, [])
    # Locked while copied, free again after.
    assert agent.locked == [("locked", "clone")]
    with engine.store.transaction(commit=False) as session:
        assert [(s.status, s.operation) for s in session.scalars(select(Snapshot))] == \
            [("ok", "")]
    # By id too.
    engine.vms.ensure({"name": "copy2", "snapshot_vm": "web", "snapshot_id": web["id"]})
    assert agent.copies[-1][0]["volume"] == web["frozen"]


def test_template_from_a_snapshot_of_a_running_vm(engine, agent, web):
    tpl = engine.templates.ensure("before", vm="web", snapshot_id=web["id"]).entity
    source, chain, target = agent.copies[-1]
    assert source["volume"] == web["frozen"] and [c["volume"] for c in chain] == [web["base"]]
    assert tpl["memory_mib"] == 256 and tpl["disks"][0]["volume_id"] == target["volume"]
    assert agent.locked == [("locked", "clone")]
    with engine.store.transaction(commit=False) as session:
        assert session.scalars(select(Snapshot)).one().status == "ok"
        assert session.scalars(select(Template)).one().status == "ok"
    with pytest.raises(InvalidSpec, match="snapshot_id.*give vm"):
        engine.templates.ensure("other", disk="x", snapshot_id=web["id"])


def test_a_failed_copy_leaves_no_vm_and_frees_the_snapshot(engine, agent, web):
    agent.fail = True
    with pytest.raises(KestrelError, match="No space left"):
        engine.vms.ensure({"name": "copy", "snapshot_vm": "web", "snapshot_id": web["id"]})
    with pytest.raises(KestrelError, match="No space left"):
        engine.templates.ensure("before", vm="web", snapshot_id=web["id"])
    assert [v["name"] for v in engine.vms.info()] == ["web"]
    assert engine.templates.info() == []
    with engine.store.transaction(commit=False) as session:
        assert session.scalars(select(Snapshot)).one().status == "ok"


def test_unknown_ambiguous_and_busy_snapshots_are_refused_naming_the_option(engine, agent,
                                                                            web):
    def clone(**origin):
        engine.vms.ensure({"name": "copy", "snapshot_vm": "web", **origin})

    with pytest.raises(InvalidSpec, match="snapshot_name.*no snapshot described 'nope' "
                                          r"\(snapshots: 'before upgrade'\)"):
        clone(snapshot_name="nope")
    with pytest.raises(InvalidSpec, match="snapshot_id.*has no snapshot"):
        clone(snapshot_id=new_id())
    with pytest.raises(InvalidSpec, match="snapshot_id.*must be an id"):
        clone(snapshot_id="../etc")
    with pytest.raises(InvalidSpec, match="snapshot_id.*not both"):
        clone(snapshot_id=web["id"], snapshot_name="before upgrade")
    with pytest.raises(InvalidSpec, match="snapshot_name.*give snapshot_vm"):
        engine.vms.ensure({"name": "copy", "snapshot_name": "before upgrade"})
    second = snapshots.create(engine, "web", description="before upgrade")
    with pytest.raises(InvalidSpec, match=f"2 snapshots.*{web['id']}, {second['id']}.*"
                                          "snapshot_id"):
        clone(snapshot_name="before upgrade")
    with engine.store.transaction() as session:
        busy = session.get(Snapshot, second["id"])
        busy.status, busy.operation = "locked", "merge"
    with pytest.raises(Conflict, match=f"merge of snapshot {second['id']}"):
        clone(snapshot_id=web["id"])
    assert [v["name"] for v in engine.vms.info()] == ["web"]


def test_a_copy_lock_whose_copier_died_is_freed_once_its_job_is_not_running(engine, agent,
                                                                            web):
    job = agent._new_job("copy", "data/x/y")["job"]
    with engine.store.transaction() as session:
        row = session.get(Snapshot, web["id"])
        row.status, row.operation, row.job_id, row.job_host = "locked", "clone", job, "h1"
    seen: dict[str, int] = {}
    assert snapshot_sources.reconcile(engine, seen) == []  # first seen
    assert snapshot_sources.reconcile(engine, seen) == []  # its copy still runs
    agent._jobs()[job]["status"] = "succeeded"
    assert snapshot_sources.reconcile(engine, seen) == [web["id"]]
    with engine.store.transaction(commit=False) as session:
        row = session.get(Snapshot, web["id"])
        assert (row.status, row.operation, row.job_id) == ("ok", "", "")
    # A create's lock is not a copy's: left to the snapshot service's reconcile.
    with engine.store.transaction() as session:
        session.get(Snapshot, web["id"]).status = "locked"
        session.get(Snapshot, web["id"]).operation = "create"
    assert snapshot_sources.reconcile(engine, seen) == snapshot_sources.reconcile(engine, seen) \
        == []
