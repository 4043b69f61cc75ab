"""VMs and template versions made from a snapshot: the settings when it was taken,
each disk's frozen volume copied through its chain (never the running top), the
snapshot locked while the copy runs, and bad or ambiguous names refused."""

import pytest
from conftest import FakeAgent
from sqlalchemy import select

from engine_lib.model import DeviceType, Snapshot, Template, Vm, Volume, new_id
from engine_lib.protocol.errors import AgentError, Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.statuses import VmStatus
from engine_lib.services import vm_sources, volumes

SOURCE = {"name": "web", "cluster": "c1", "memory": "512MiB",
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
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    return agent


def _snapshot(engine, vm_name, description, memory_mib=None) -> dict:
    """What taking a snapshot leaves (services.snapshots): a new top on the disk's
    volume, and a row naming the frozen one and the settings then."""
    with engine.store.transaction() as session:
        vm = session.scalars(select(Vm).where(Vm.name == vm_name)).one()
        config = vm_sources.settings_of(vm)
        if memory_mib:
            config["memory_mib"] = memory_mib
        frozen = []
        for device in vm.devices_of(DeviceType.DISK):
            spec = dict(device.spec)
            below = session.get(Volume, spec["volume_id"])
            top = Volume(id=new_id(), image_id=spec["image_id"], storage_domain="data",
                         format="qcow2", size_mib=below.size_mib, parent=below)
            session.add(top)
            frozen.append({"disk": device.name, "image_id": spec["image_id"],
                           "volume_id": below.id})
            spec["volume_id"], spec["chain"] = top.id, volumes.chain_refs(top)
            device.spec = spec
        row = Snapshot(vm_id=vm.id, description=description, status="ok", vm_config=config,
                       disks=frozen, vm_running=True)
        session.add(row)
        session.flush()
        return {"id": row.id, "frozen": frozen[0]["volume_id"], "top": top.id}


@pytest.fixture
def web(engine, agent):
    """VM web, running, on a base volume with one snapshot (memory 256 MiB then)."""
    engine.vms.ensure(SOURCE)
    with engine.store.transaction() as session:
        vm = session.scalars(select(Vm).where(Vm.name == "web")).one()
        device = vm.devices_of(DeviceType.DISK)[0]
        device.volume_created = True
        base = Volume(id=new_id(), image_id=new_id(), storage_domain="data", format="qcow2",
                      size_mib=1024)
        session.add(base)
        volume = session.get(Volume, device.spec["volume_id"])
        volume.parent = base
        device.spec = {**device.spec, "chain": volumes.chain_refs(volume)}
        vm.status = VmStatus.UP
        base_id = base.id
    snap = _snapshot(engine, "web", "before upgrade", memory_mib=256)
    disk = engine.vms.info("web")[0]["disks"][0]
    agent.files = {f"data/{disk['image_id']}/{snap['frozen']}": b"frozen data",
                   f"data/{disk['image_id']}/{snap['top']}": b"newer data"}
    return {**snap, "base": base_id}


def test_clone_from_a_running_vms_snapshot_copies_the_frozen_volume(engine, agent, web):
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
    second = _snapshot(engine, "web", "before upgrade")
    with pytest.raises(InvalidSpec, match=f"2 snapshots.*{web['id']}, {second['id']}.*"
                                          "snapshot_id"):
        clone(snapshot_name="before upgrade")
    with engine.store.transaction() as session:
        busy = session.get(Snapshot, second["id"])
        busy.status, busy.operation = "locked", "merge"
    with pytest.raises(Conflict, match=f"merge of snapshot {second['id']}"):
        clone(snapshot_id=web["id"])
    assert [v["name"] for v in engine.vms.info()] == ["web"]
