"""Backups on the engine: full and incremental restore points, why one fell back to
full, removal that keeps the remaining restore points exact, and restores."""

import pytest
from conftest import FakeAgent
from sqlalchemy import select

from engine_lib.model import Backup, Checkpoint, DeviceType, Host, Vm, Volume
from engine_lib.protocol.errors import AgentUnreachable, Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.statuses import VmStatus
from engine_lib.services import backups

VM = {"name": "web", "cluster": "c1", "memory": "512MiB",
      "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data", "bootable": True},
                {"name": "logs", "size": "2GiB", "storage_domain": "data"}],
      "nics": [{"name": "nic1", "network": "br0"}]}


class BackupAgent(FakeAgent):
    """Disks as {block: data}; a backup file holds the blocks it was given, a chain reads
    its files child over parent. ``dirty`` is what the guest wrote since the last
    backup (per alias); ``disk`` is each disk's whole content."""

    fell_back = ""

    def __init__(self, name):
        super().__init__(name)
        self.blocks: dict[str, dict] = {}  # "domain/image/volume" -> {block: data}
        self.disk: dict[str, dict] = {}
        self.dirty: dict[str, dict] = {}
        self.bodies: list[dict] = []
        self.merges: list[tuple] = []

    def start_backup(self, vm_id, body):
        self._check()
        self.bodies.append(body)
        answer = self._new_job("backup", body["backup"])
        disks = []
        for disk in body["disks"]:
            full = not body["incremental"] or self.fell_back
            data = dict(self.disk[disk["alias"]] if full else self.dirty[disk["alias"]])
            self.blocks[self._target(disk["target_volume"])] = data
            disks.append({"alias": disk["alias"], "bytes": 100 * len(data), "size_mib": 1024})
        self.dirty = {alias: {} for alias in self.disk}
        self._jobs()[answer["job"]].update(status="succeeded", progress=100, result={
            "checkpoint_xml": f"<domaincheckpoint><name>{body['checkpoint']}</name>"
                              "</domaincheckpoint>",
            "disks": disks, "fell_back": self.fell_back})
        return answer

    fail_merge_at = 0  # that merge (1-based) is lost after committing, as in a crash

    def merge_volumes(self, base, top, child, chain):
        self._check()
        self.merges.append((base, top, child, chain))
        if len(self.merges) == self.fail_merge_at:
            self.blocks[self._target(base)].update(self.blocks[self._target(top)])
            raise AgentUnreachable("agent h1 unreachable: connection reset", cause="reset")
        self.blocks[self._target(base)].update(self.blocks[self._target(top)])
        answer = self._new_job("merge", self._target(base))
        self._jobs()[answer["job"]].update(status="succeeded", progress=100, result={})
        return answer

    def copy_volume(self, source, chain, target):
        read: dict = {}
        for volume in [*reversed(chain), source]:
            read.update(self.blocks.get(self._target({**volume, "domain": source["domain"]}),
                                        {}))
        self.blocks[self._target(target)] = read
        return super().copy_volume(source, chain, target)

    def delete_volumes(self, volumes):
        super().delete_volumes(volumes)
        for volume in volumes:
            self.blocks.pop(self._target(volume), None)


@pytest.fixture
def agent(engine, cluster, agents):
    agent = agents["10.0.0.1"] = BackupAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    return agent


@pytest.fixture
def web(engine, agent):
    """A VM that ran once and runs on h1 now."""
    engine.vms.ensure(VM)
    with engine.store.transaction() as session:
        vm = session.scalars(select(Vm).where(Vm.name == "web")).one()
        for device in vm.devices_of(DeviceType.DISK):
            device.volume_created = True
            agent.disk[device.user_alias] = {}
            agent.dirty[device.user_alias] = {}
        _run(session, vm)
        return {d.name: d.user_alias for d in vm.devices_of(DeviceType.DISK)}


def _run(session, vm, status=VmStatus.UP):
    vm.status = status
    vm.run_on_host = session.scalars(select(Host)).one()


def _stop(engine):
    with engine.store.transaction() as session:
        vm = session.scalars(select(Vm).where(Vm.name == "web")).one()
        vm.status, vm.run_on_host = VmStatus.DOWN, None


def _write(agent, aliases, disk, **blocks):
    agent.disk[aliases[disk]].update(blocks)
    agent.dirty[aliases[disk]].update(blocks)


def _read(engine, agent, backup_id) -> dict:
    """What each disk of a restore point reads: its file's chain by the volume rows."""
    out = {}
    with engine.store.transaction(commit=False) as session:
        row = session.get(Backup, backup_id)
        for entry in row.disks:
            volume = session.get(Volume, entry["volume_id"])
            data: dict = {}
            for member in [*reversed(volume.chain()), volume]:
                assert member.content_type == "backup"
                data.update(agent.blocks[f"data/{member.image_id}/{member.id}"])
            out[entry["disk"]] = data
    return out


def test_first_backup_is_full_and_says_why_then_incrementals_build_on_it(engine, agent, web):
    first = backups.backup(engine, "web")
    assert first["mode"] == "full" and first["status"] == "succeeded"
    assert "has no checkpoint yet" in first["fallback_reason"]
    assert agent.bodies[0]["incremental"] == "" and agent.bodies[0]["checkpoints"] == []
    assert {d["alias"] for d in agent.bodies[0]["disks"]} == set(web.values())
    assert {d["target"] for d in agent.bodies[0]["disks"]} == {"vda", "vdb"}
    _write(agent, web, "root", a=1, b=1)
    second = backups.backup(engine, "web", description="nightly")
    assert second["mode"] == "incremental" and second["fallback_reason"] == ""
    assert second["from_checkpoint_id"] == first["checkpoint_id"]
    body = agent.bodies[1]
    assert body["incremental"] == first["checkpoint_id"]
    assert [c["id"] for c in body["checkpoints"]] == [first["checkpoint_id"]]
    assert all(d["parent_volume"]["volume"] == f["volume_id"]
               for d, f in zip(body["disks"], first["disks"], strict=True))
    assert second["bytes_written"] == 200  # only what changed
    with engine.store.transaction(commit=False) as session:
        files = {v.id: (v.parent_id, v.image_id, v.status, v.readonly)
                 for v in session.scalars(select(Volume).where(
                     Volume.content_type == "backup"))}
        cps = session.scalars(select(Checkpoint).order_by(Checkpoint.created_at)).all()
        assert [(c.id, c.parent_id) for c in cps] == [
            (first["checkpoint_id"], ""), (second["checkpoint_id"], first["checkpoint_id"])]
    for new, old in zip(second["disks"], first["disks"], strict=True):
        assert files[new["volume_id"]] == (old["volume_id"], old["image_id"], "ok", True)
    assert _read(engine, agent, second["id"]) == {"root": {"a": 1, "b": 1}, "logs": {}}
    assert [b["id"] for b in backups.list_for(engine, "web")] == [first["id"], second["id"]]


def test_a_disk_that_changed_chain_since_the_checkpoint_falls_back_to_full(engine, agent,
                                                                           web):
    first = backups.backup(engine, "web", mode="full")
    assert first["fallback_reason"] == ""
    with engine.store.transaction() as session:  # as a snapshot puts a new top on it
        vm = session.scalars(select(Vm).where(Vm.name == "web")).one()
        root = next(d for d in vm.devices_of(DeviceType.DISK) if d.name == "root")
        old = root.spec["volume_id"]
        root.spec = {**root.spec, "volume_id": "new-top"}
    _write(agent, web, "root", c=3)
    second = backups.backup(engine, "web")
    assert second["mode"] == "full" and second["from_checkpoint_id"] == ""
    assert second["fallback_reason"] == (
        f"disk 'root' changed chain since checkpoint {first['checkpoint_id']} (its top "
        f"volume was {old}, now new-top)")
    assert agent.bodies[1]["incremental"] == ""
    assert all(d["parent_volume"] is None for d in agent.bodies[1]["disks"])


def test_the_agent_falling_back_is_recorded_and_a_stopped_vm_is_copied(engine, agent, web):
    backups.backup(engine, "web")
    agent.fell_back = "bitmap 'x' missing in disk vda"
    fell = backups.backup(engine, "web")
    assert (fell["mode"], fell["fallback_reason"]) == ("full", agent.fell_back)
    with engine.store.transaction(commit=False) as session:
        assert session.get(Checkpoint, fell["checkpoint_id"]).parent_id == ""
    _stop(engine)
    stopped = backups.backup(engine, "web")
    assert stopped["mode"] == "full" and stopped["checkpoint_id"] == ""
    assert stopped["fallback_reason"].startswith("VM is Down")
    assert len(agent.copies) == 2 and len(agent.bodies) == 2


def test_bad_input_and_busy_vms_are_refused_naming_the_cause(engine, agent, web):
    with pytest.raises(InvalidSpec) as err:
        backups.backup(engine, "web", mode="differential")
    assert err.value.details["field"] == "mode"
    with pytest.raises(InvalidSpec) as err:
        backups.backup(engine, "nope")
    assert err.value.details["field"] == "vm_name"
    # Once the cluster has domains attached, a backup goes to one of them only.
    engine.storage_domains.ensure("data", path="/srv/data", clusters=["c1"])
    with pytest.raises(InvalidSpec, match="'elsewhere' is not a storage domain attached to "
                                          "cluster 'c1' \\(attached: data\\)") as err:
        backups.backup(engine, "web", storage_domain="elsewhere")
    assert err.value.details["field"] == "storage_domain"
    assert backups.list_for(engine, "web") == []
    with engine.store.transaction() as session:
        _run(session, session.scalars(select(Vm)).one(), VmStatus.MIGRATING_FROM)
    with pytest.raises(Conflict, match="VM 'web' is MigratingFrom"):
        backups.backup(engine, "web")
    with engine.store.transaction() as session:
        _run(session, session.scalars(select(Vm)).one())
        session.add(Backup(vm_id=session.scalars(select(Vm)).one().id, vm_name="web",
                           storage_domain="data", status="running", disks=[]))
    with pytest.raises(Conflict, match="has backup .* running"):
        backups.backup(engine, "web")
    with pytest.raises(InvalidSpec) as err:
        backups.restore(engine, "x")
    assert err.value.details["field"] == "restore_vm_name"


def test_removing_restore_points_keeps_the_others_exact(engine, agent, web):
    points, expected = [], []
    for value in range(4):
        _write(agent, web, "root", **{f"b{value}": value, "shared": value})
        _write(agent, web, "logs", **{f"l{value}": value})
        points.append(backups.backup(engine, "web")["id"])
        expected.append({"root": dict(agent.disk[web["root"]]),
                         "logs": dict(agent.disk[web["logs"]])})
    # The oldest (a full others build on), then one in the middle, then the newest.
    # The first removal is cut off in its second disk's merge (the first disk's is
    # done), and run again: the first disk's file is never merged a second time.
    agent.fail_merge_at = 2
    with pytest.raises(AgentUnreachable):
        backups.remove(engine, points[0])
    assert backups.get(engine, points[0])["status"] == "removing"
    with pytest.raises(Conflict, match="is removing"):
        backups.restore(engine, points[0], disk_name="x", disk="root")
    for gone in (0, 2, 3):
        backups.remove(engine, points[gone])
        for index, point in enumerate(points):
            if index in (0, 2, 3)[:(0, 2, 3).index(gone) + 1]:
                continue
            assert _read(engine, agent, point) == expected[index]
    assert [b["id"] for b in backups.list_for(engine, "web")] == [points[1]]
    with engine.store.transaction(commit=False) as session:
        left = [(v.parent_id, f"data/{v.image_id}/{v.id}") for v in session.scalars(
            select(Volume).where(Volume.content_type == "backup"))]
    assert len(left) == 2 and all(parent is None for parent, _ in left)
    assert set(agent.blocks) == {path for _, path in left}
    # A merge names the chain below its base and the child to rebase.
    base, top, child, chain = agent.merges[0]
    assert chain == [] and child is not None and top["volume"] != base["volume"]
    # The next backup still builds on the newest checkpoint left.
    _write(agent, web, "root", z=9)
    assert backups.backup(engine, "web")["fallback_reason"].startswith(
        "the backup that made checkpoint")


def test_restore_to_a_floating_disk_and_to_a_new_vm(engine, agent, web):
    _write(agent, web, "root", a=1)
    backups.backup(engine, "web")
    _write(agent, web, "root", b=2)
    _write(agent, web, "logs", l=1)
    point = backups.backup(engine, "web")
    with pytest.raises(InvalidSpec) as err:
        backups.restore(engine, point["id"], disk_name="copy")
    assert err.value.details["field"] == "disk"
    disk = backups.restore(engine, point["id"], disk_name="copy", disk="root")["disk"]
    assert disk["name"] == "copy" and disk["status"] == "ok"
    assert agent.blocks[f"data/{disk['image_id']}/{disk['id']}"] == {"a": 1, "b": 2}
    with pytest.raises(Conflict, match="disk 'copy' exists"):
        backups.restore(engine, point["id"], disk_name="copy", disk="root")
    engine.vms.ensure({"name": "web", "memory": "1GiB"})  # changed after the backup
    vm = backups.restore(engine, point["id"], vm_name="web2")["vm"]
    assert vm["name"] == "web2" and vm["memory_mib"] == 512 and vm["status"] == "Down"
    restored = {d["name"]: d for d in vm["disks"]}
    assert set(restored) == {"root", "logs"}
    for name, data in (("root", {"a": 1, "b": 2}), ("logs", {"l": 1})):
        spec = restored[name]
        assert agent.blocks[f"data/{spec['image_id']}/{spec['volume_id']}"] == data
    with engine.store.transaction(commit=False) as session:
        rows = [session.get(Volume, d["volume_id"]) for d in restored.values()]
        assert all(r.status == "ok" and r.content_type == "data" and r.parent_id is None
                   for r in rows)
        new = session.scalars(select(Vm).where(Vm.name == "web2")).one()
        assert all(d.volume_created for d in new.devices_of(DeviceType.DISK))
    with pytest.raises(Conflict, match="VM 'web2' exists"):
        backups.restore(engine, point["id"], vm_name="web2")


def test_with_the_agent_model_a_restarted_domain_gets_its_checkpoints_back(engine, cluster,
                                                                          agents):
    """conftest's FakeAgent models libvirt's checkpoints: a domain started again knows
    none, and the engine's checkpoint redefined keeps the next backup incremental. Each
    backup prunes the older ones: the engine keeps only the newest."""
    agent = agents["10.0.0.1"] = FakeAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure({**VM, "disks": VM["disks"][:1]})
    with engine.store.transaction() as session:
        vm = session.scalars(select(Vm)).one()
        vm.devices_of(DeviceType.DISK)[0].volume_created = True
        _run(session, vm)
        agent.vms[vm.id] = "Up"
        vm_id = vm.id
    first = backups.backup(engine, "web")
    second = backups.backup(engine, "web")
    assert (second["mode"], second["fallback_reason"]) == ("incremental", "")
    agent.checkpoints_of[vm_id] = []  # the transient domain was started again
    third = backups.backup(engine, "web")
    assert (third["mode"], third["fallback_reason"]) == ("incremental", "")
    assert [c["id"] for c in agent.backups[1]["checkpoints"]] == [first["checkpoint_id"]]
    assert [c["id"] for c in agent.backups[2]["checkpoints"]] == [second["checkpoint_id"]]
    assert agent.checkpoints(vm_id)["checkpoints"] == [third["checkpoint_id"]]
    with engine.store.transaction(commit=False) as session:
        assert session.scalars(select(Checkpoint.id)).all() == [third["checkpoint_id"]]
    agent.backup_fall_back = why = "bitmap of checkpoint x is inconsistent in vda"
    fourth = backups.backup(engine, "web")
    assert (fourth["mode"], fourth["fallback_reason"]) == ("full", why)
    # A failed backup leaves a failed row, no file rows, and the last checkpoint usable.
    agent.backup_error = KestrelError("qemu: No space left on device (storage domain 'data')")
    with pytest.raises(KestrelError, match="No space left"):
        backups.backup(engine, "web")
    failed = backups.list_for(engine, "web")[-1]
    assert failed["status"] == "failed" and "No space left" in failed["error"]
    with engine.store.transaction(commit=False) as session:
        assert all(session.get(Volume, d["volume_id"]) is None for d in failed["disks"])
    again = backups.backup(engine, "web")
    assert again["mode"] == "incremental" and again["from_checkpoint_id"] == \
        fourth["checkpoint_id"]


def test_reconcile_fails_a_backup_whose_agent_job_was_lost(engine, agent, web):
    done = backups.backup(engine, "web")
    assert agent.jobs == {}  # forgotten once its outcome was recorded
    with engine.store.transaction() as session:
        vm = session.scalars(select(Vm)).one()
        files = [Volume(id=f"f{i}", image_id="img", storage_domain="data", status="locked",
                        content_type="backup", readonly=True) for i in range(2)]
        session.add_all(files)
        for job, name, file in (("gone-job", "lost", "f0"), ("live-job", "alive", "f1")):
            session.add(Backup(id=name, vm_id=vm.id, vm_name="web", storage_domain="data",
                               status="running", job_id=job, job_host="h1",
                               disks=[{"disk": "root", "volume_id": file}]))
    agent.jobs = {"live-job": {"id": "live-job", "status": "running", "polls": 99}}
    assert backups.reconcile(engine) == ["lost"]
    assert backups.get(engine, "lost")["status"] == "failed"
    assert "agent job gone-job on host 'h1' was lost" in backups.get(engine, "lost")["error"]
    assert {"domain": "data", "image": "img", "volume": "f0", "format": "qcow2",
            "size_mib": 0} in agent.deleted_volumes
    with engine.store.transaction(commit=False) as session:
        assert session.get(Volume, "f0") is None and session.get(Volume, "f1") is not None
    assert backups.get(engine, "alive")["status"] == "running"
    assert backups.get(engine, done["id"])["status"] == "succeeded"
    assert backups.reconcile(engine) == []
