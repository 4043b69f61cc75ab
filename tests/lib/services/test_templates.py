"""Template versions (from a stopped VM or a floating disk), thin and cloned VMs from
them, clones of stopped VMs, and removal refused while thin VMs depend on a version."""

import pytest
from conftest import FakeAgent
from sqlalchemy import select

from engine_lib.model import DeviceType, Template, Vm, Volume
from engine_lib.protocol.errors import AgentError, Conflict, InvalidSpec, KestrelError
from engine_lib.protocol.statuses import VmStatus

SOURCE = {"name": "golden", "cluster": "c1", "memory": "512MiB", "machine": "q35",
          "cpu": {"sockets": 1, "cores": 2}, "custom_properties": {},
          "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data",
                     "interface": "scsi", "bootable": True}],
          "nics": [{"name": "nic1", "network": "br0"}],
          "cloud_init": {"hostname": "golden"}}


class CopyAgent(FakeAgent):
    """Copies volumes at once; ``fail_copy_at`` (1-based) makes that copy fail."""

    fail_copy_at = 0

    def copy_volume(self, source, chain, target):
        if self.fail_copy_at and len(getattr(self, "copies", [])) + 1 >= self.fail_copy_at:
            self.copies = getattr(self, "copies", []) + [(source, chain, target)]
            answer = self._new_job("copy", self._target(target))
            self._jobs()[answer["job"]].update(status="failed", error=AgentError(
                "qemu-img convert: No space left on device").to_dict())
            return answer
        return super().copy_volume(source, chain, target)


@pytest.fixture
def agent(engine, cluster, agents):
    agent = agents["10.0.0.1"] = CopyAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    return agent


def _written(engine, name):
    """The VM ran once: its volumes exist (as after a start)."""
    with engine.store.transaction() as session:
        vm = session.scalars(select(Vm).where(Vm.name == name)).one()
        for device in vm.devices_of(DeviceType.DISK):
            device.volume_created = True
            if session.get(Volume, device.spec["volume_id"]) is None:
                session.add(Volume(id=device.spec["volume_id"], image_id=device.spec["image_id"],
                                   storage_domain="data", format="qcow2", size_mib=1024))


@pytest.fixture
def golden(engine, agent):
    engine.vms.ensure(SOURCE)
    _written(engine, "golden")
    disk = engine.vms.info("golden")[0]["disks"][0]
    agent.files = {f"data/{disk['image_id']}/{disk['volume_id']}": b"golden data"}
    return disk


def _volumes(engine):
    with engine.store.transaction(commit=False) as session:
        return {v.id: (v.parent_id, v.template_id, v.status, v.readonly)
                for v in session.scalars(select(Volume))}


def test_template_from_a_stopped_vm_copies_its_disks_and_takes_its_settings(engine, agent,
                                                                            golden):
    result = engine.templates.ensure("tpl", vm="golden", description="base")
    tpl = result.entity
    assert result.changed and tpl["status"] == "ok" and tpl["version"] == {"number": 1,
                                                                           "name": ""}
    assert tpl["memory_mib"] == 512 and tpl["cpu"]["cores"] == 2
    (disk,) = tpl["disks"]
    assert disk["name"] == "root" and disk["storage_domain"] == "data"
    assert disk["volume_id"] != golden["volume_id"]
    source, chain, target = agent.copies[0]
    assert source == {"domain": "data", "image": golden["image_id"],
                      "volume": golden["volume_id"], "format": "qcow2"} and chain == []
    assert target["volume"] == disk["volume_id"] and target["domain"] == "data"
    assert agent.files[f"data/{target['image']}/{target['volume']}"] == b"golden data"
    assert _volumes(engine)[disk["volume_id"]][1:] == (tpl["id"], "ok", True)
    with engine.store.transaction(commit=False) as session:
        spec = session.scalars(select(Template)).one().spec
    assert "cloud_init" not in spec and all("mac" not in n for n in spec["nics"])
    # Idempotent: the version exists.
    assert not engine.templates.ensure("tpl", vm="golden", description="base").changed
    assert len(agent.copies) == 1


def test_versions_count_up_and_a_vm_takes_the_latest_unless_told(engine, agent, golden):
    engine.templates.ensure("tpl", vm="golden")
    engine.vms.ensure({"name": "golden", "memory": "1GiB"})
    v2 = engine.templates.ensure("tpl", vm="golden", version={"number": 2, "name": "big"})
    assert v2.entity["version"] == {"number": 2, "name": "big"}
    assert not engine.templates.ensure("tpl", vm="golden", version={"name": "big"}).changed
    with pytest.raises(InvalidSpec) as err:
        engine.templates.ensure("tpl", vm="golden", version={"number": 5})
    assert err.value.details["field"] == "version.number"
    latest = engine.vms.ensure({"name": "a", "template": "tpl"}).entity
    assert latest["memory_mib"] == 1024 and latest["template"] == {"name": "tpl", "version": 2}
    first = engine.vms.ensure({"name": "b", "template": "tpl", "template_version": 1}).entity
    assert first["memory_mib"] == 512 and first["template"] == {"name": "tpl", "version": 1}
    assert [t["version"]["number"] for t in engine.templates.info("tpl")] == [1, 2]


def test_a_running_vm_is_no_template_source(engine, agent, golden):
    with engine.store.transaction() as session:
        session.scalars(select(Vm)).one().status = VmStatus.UP
    with pytest.raises(Conflict, match="VM 'golden' is Up: making template 'tpl' from it "
                                       "needs it stopped"):
        engine.templates.ensure("tpl", vm="golden")
    assert engine.templates.info() == [] and not hasattr(agent, "copies")


def test_a_copy_failing_half_way_leaves_no_template_and_no_volume(engine, agent, golden):
    engine.vms.ensure({"name": "golden", "disks": [
        {"name": "root", "size": "1GiB", "storage_domain": "data", "interface": "scsi",
         "bootable": True}, {"name": "data", "size": "2GiB", "storage_domain": "data"}]})
    _written(engine, "golden")
    before = _volumes(engine)
    agent.fail_copy_at = 2
    with pytest.raises(AgentError, match="No space left"):
        engine.templates.ensure("tpl", vm="golden")
    assert engine.templates.info() == [] and _volumes(engine) == before
    made = [target for _, _, target in agent.copies]
    assert [v["volume"] for v in agent.deleted_volumes] == [v["volume"] for v in made]
    # Nothing blocks the next attempt.
    agent.fail_copy_at = 0
    assert engine.templates.ensure("tpl", vm="golden").entity["status"] == "ok"


def test_a_second_create_of_a_version_being_copied_is_refused(engine, agent, golden):
    agent.job_polls = 1
    seen = []

    def during(job):  # the first create is copying: its version is locked
        if not seen:
            with pytest.raises(Conflict, match="version 1 is being created"):
                engine.templates.ensure("tpl", vm="golden")
            seen.append(engine.templates.info("tpl")[0]["status"])

    engine.templates.ensure("tpl", vm="golden", progress=during)
    assert seen == ["locked"] and engine.templates.info("tpl")[0]["status"] == "ok"


def test_thin_vm_overlays_the_template_volume_and_inherits_with_overrides(engine, agent, golden):
    tpl = engine.templates.ensure("tpl", vm="golden").entity
    base = tpl["disks"][0]["volume_id"]
    vm = engine.vms.ensure({"name": "thin", "template": "tpl", "memory": "768MiB",
                            "disks": [{"name": "root", "size": "2GiB"}],
                            "cloud_init": {"hostname": "thin"}}).entity
    assert vm["memory_mib"] == 768 and vm["cpu"]["cores"] == 2 and vm["cluster"] == "c1"
    (disk,) = vm["disks"]
    assert disk["interface"] == "scsi" and disk["size_mib"] == 2048 and disk["bootable"]
    assert disk["volume_id"] not in (base, golden["volume_id"])
    assert _volumes(engine)[disk["volume_id"]] == (base, None, "ok", False)
    assert [m["volume_id"] for m in disk["chain"]] == [base]  # rendered as its backingStore
    assert vm["nics"][0]["mac"] != engine.vms.info("golden")[0]["nics"][0]["mac"]
    assert len(agent.copies) == 1  # nothing copied for a thin VM
    with engine.store.transaction(commit=False) as session:
        assert not session.scalars(select(Vm).where(Vm.name == "thin")).one() \
            .devices_of(DeviceType.DISK)[0].volume_created  # the agent makes the overlay
    # Re-running the task changes nothing; another template is refused.
    again = engine.vms.ensure({"name": "thin", "template": "tpl", "memory": "768MiB",
                               "disks": [{"name": "root", "size": "2GiB"}],
                               "cloud_init": {"hostname": "thin"}})
    assert not again.changed
    engine.templates.ensure("other", vm="golden")
    with pytest.raises(InvalidSpec, match="was made from template 'tpl' version 1") as err:
        engine.vms.ensure({"name": "thin", "template": "other"})
    assert err.value.details["field"] == "template"


def test_thin_disk_stays_on_the_template_domain_as_qcow2(engine, agent, golden):
    engine.templates.ensure("tpl", vm="golden")
    with pytest.raises(InvalidSpec) as err:
        engine.vms.ensure({"name": "v", "template": "tpl",
                           "disks": [{"name": "root", "storage_domain": "other"}]})
    assert err.value.details["field"] == "disks[0].storage_domain"
    with pytest.raises(InvalidSpec) as err:
        engine.vms.ensure({"name": "v", "template": "tpl",
                           "disks": [{"name": "root", "size": "512MiB"}]})
    assert err.value.details["field"] == "disks[0].size"


def test_unknown_template_or_version_names_the_option(engine, agent, golden):
    with pytest.raises(InvalidSpec, match="template 'nope' does not exist") as err:
        engine.vms.ensure({"name": "v", "template": "nope"})
    assert err.value.details["field"] == "template"
    engine.templates.ensure("tpl", vm="golden")
    with pytest.raises(InvalidSpec, match="has no version 3") as err:
        engine.vms.ensure({"name": "v", "template": "tpl", "template_version": 3})
    assert err.value.details["field"] == "template_version"
    with pytest.raises(InvalidSpec) as err:
        engine.vms.ensure({"name": "v", "cluster": "c1", "clone": True})
    assert err.value.details["field"] == "clone"
    assert [v["name"] for v in engine.vms.info()] == ["golden"]


def test_cloned_vm_from_a_template_gets_its_own_copy(engine, agent, golden):
    tpl = engine.templates.ensure("tpl", vm="golden").entity
    vm = engine.vms.ensure({"name": "full", "template": "tpl", "clone": True}).entity
    (disk,) = vm["disks"]
    source, _, target = agent.copies[-1]
    assert source["volume"] == tpl["disks"][0]["volume_id"]
    assert target["volume"] == disk["volume_id"]
    assert agent.files[f"data/{disk['image_id']}/{disk['volume_id']}"] == b"golden data"
    assert _volumes(engine)[disk["volume_id"]] == (None, None, "ok", False)
    # An independent copy does not hold the template back.
    assert not engine.templates.ensure("tpl", state="absent").entity
    assert engine.vms.info("full")[0]["template"] is None


def test_clone_of_a_stopped_vm(engine, agent, golden):
    vm = engine.vms.ensure({"name": "copy", "snapshot_vm": "golden",
                            "cloud_init": {"hostname": "copy"}}).entity
    (disk,) = vm["disks"]
    source, _, target = agent.copies[-1]
    assert source["volume"] == golden["volume_id"] and target["volume"] == disk["volume_id"]
    assert vm["memory_mib"] == 512 and disk["interface"] == "scsi"
    assert agent.files[f"data/{disk['image_id']}/{disk['volume_id']}"] == b"golden data"
    with engine.store.transaction() as session:
        session.scalars(select(Vm).where(Vm.name == "golden")).one().status = VmStatus.UP
    with pytest.raises(Conflict, match="VM 'golden' is Up"):
        engine.vms.ensure({"name": "copy2", "snapshot_vm": "golden"})


def test_a_failed_clone_leaves_no_vm(engine, agent, golden):
    engine.templates.ensure("tpl", vm="golden")
    before = _volumes(engine)
    agent.fail_copy_at = 2
    with pytest.raises(KestrelError, match="No space left"):
        engine.vms.ensure({"name": "full", "template": "tpl", "clone": True})
    assert [v["name"] for v in engine.vms.info()] == ["golden"] and _volumes(engine) == before


def test_removal_refused_while_thin_vms_depend_naming_them(engine, agent, golden):
    tpl = engine.templates.ensure("tpl", vm="golden").entity
    engine.vms.ensure({"name": "thin1", "template": "tpl"})
    engine.vms.ensure({"name": "thin2", "template": "tpl"})
    with pytest.raises(Conflict, match="used by VM 'thin1', VM 'thin2'") as err:
        engine.templates.ensure("tpl", state="absent")
    assert err.value.details["dependents"] == ["VM 'thin1'", "VM 'thin2'"]
    assert engine.templates.info("tpl")[0]["vms"] == ["thin1", "thin2"]
    engine.vms.ensure({"name": "thin1"}, state="absent")
    engine.vms.ensure({"name": "thin2"}, state="absent")
    assert engine.templates.ensure("tpl", state="absent", check_mode=True).changed
    assert engine.templates.info("tpl")
    assert engine.templates.ensure("tpl", state="absent").changed
    assert engine.templates.info("tpl") == []
    assert tpl["disks"][0]["volume_id"] in [v["volume"] for v in agent.deleted_volumes]
    assert tpl["disks"][0]["volume_id"] not in _volumes(engine)
    assert not engine.templates.ensure("tpl", state="absent").changed


def test_template_straight_from_a_floating_disk(engine, agent):
    with engine.store.transaction() as session:
        session.add(Volume(id="v-up", image_id="i-up", storage_domain="data", format="qcow2",
                           size_mib=2048, name="debian12", status="ok"))
    with pytest.raises(InvalidSpec) as err:
        engine.templates.ensure("deb", disk="nope", cluster="c1")
    assert err.value.details["field"] == "disk"
    check = engine.templates.ensure("deb", disk="debian12", cluster="c1", check_mode=True)
    assert check.changed and engine.templates.info() == []
    tpl = engine.templates.ensure("deb", disk="debian12", cluster="c1", seal=True,
                                  settings={"memory": "2GiB", "cpu": {"cores": 2}}).entity
    assert tpl["memory_mib"] == 2048 and tpl["cpu"]["cores"] == 2 and tpl["sealed"]
    assert tpl["disks"][0]["volume_id"] == "v-up" and not hasattr(agent, "copies")
    assert agent.seals[0][0]["volume"] == "v-up"
    with engine.store.transaction(commit=False) as session:
        volume = session.get(Volume, "v-up")
        assert (volume.name, volume.readonly, volume.template_id) == ("", True, tpl["id"])
    vm = engine.vms.ensure({"name": "d1", "template": "deb"}).entity
    assert _volumes(engine)[vm["disks"][0]["volume_id"]][0] == "v-up"


def test_seal_runs_on_the_copied_boot_disk(engine, agent, golden):
    tpl = engine.templates.ensure("tpl", vm="golden", seal=True).entity
    assert agent.seals == [({"domain": "data", "image": agent.copies[0][2]["image"],
                             "volume": tpl["disks"][0]["volume_id"], "format": "qcow2"}, "")]


def test_a_copy_lost_in_a_crash_leaves_an_illegal_version_that_removal_finishes(
        engine, agent, golden, monkeypatch):
    """The engine dies mid-copy (nothing of its own cleanup runs), then the agent
    restarts: the loop's reconcile deletes the half copy and marks the version illegal,
    which a removal then takes away."""
    from engine_lib.services import images, volume_jobs

    def crash(job):
        raise KeyboardInterrupt
    monkeypatch.setattr(volume_jobs, "_abort", lambda agent, job: None)  # never ran
    agent.job_polls = 1
    with pytest.raises(KeyboardInterrupt):
        engine.templates.ensure("tpl", vm="golden", progress=crash)
    (copy,) = [v for v in _volumes(engine) if _volumes(engine)[v][1] is not None]
    assert images.reconcile(engine) == []  # the agent still runs the copy
    agent.jobs.clear()  # the agent restarted
    assert images.reconcile(engine) == [copy]
    assert engine.templates.info("tpl")[0]["status"] == "illegal"
    assert _volumes(engine)[copy][2] == "illegal"
    assert {"domain": "data", "image": engine.templates.info("tpl")[0]["disks"][0]["image_id"],
            "volume": copy} in agent.deleted_volumes
    assert engine.templates.ensure("tpl", state="absent").changed
    assert copy not in _volumes(engine) and engine.templates.info("tpl") == []


def test_grants_on_a_template_hold_for_its_versions_and_go_with_the_last(engine, agent,
                                                                          golden):
    engine.templates.ensure("tpl", vm="golden")
    engine.templates.ensure("tpl", vm="golden", version={"number": 2})
    engine.users.ensure("reader")
    engine.permissions.ensure(role="ReadOnly", user="reader", object_type="template",
                              object_name="tpl")
    engine.templates.ensure("tpl", state="absent", version={"number": 1})
    assert [p["object_name"] for p in engine.permissions.info(user="reader")] == ["tpl"]
    engine.templates.ensure("tpl", state="absent")
    assert engine.permissions.info(user="reader") == []
