"""Every VM disk on a storage domain has a volumes row, kept in step as disks change,
and a thin disk's chain reaches the domain XML and the agent from those rows."""

import xml.etree.ElementTree as ET

import pytest
from sqlalchemy.orm.exc import StaleDataError
from test_vm_devices import VM, DeviceAgent

from engine_lib.agent import domxml as agent_domxml
from engine_lib.model import Cluster, Template, Volume
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.services import vm_config, volumes
from engine_lib.services.common import get_vm

BASE = {"id": "base-vol", "image_id": "base-img", "storage_domain": "data", "format": "raw",
        "size_mib": 512}


@pytest.fixture
def host(engine, cluster, agents):
    agent = agents["10.0.0.1"] = DeviceAgent("h1")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure(VM)
    return agent


def _row(engine, volume_id):
    with engine.store.transaction(commit=False) as session:
        row = session.get(Volume, volume_id)
        return None if row is None else {"name": row.name, "size_mib": row.size_mib,
                                         "parent_id": row.parent_id,
                                         "storage_domain": row.storage_domain}


def _add(engine, **values):
    with engine.store.transaction() as session:
        session.add(Volume(**{**BASE, **values}))


def _thin_disk(engine, name="thin", vm="vm1", parent="base-vol"):
    """What a thin VM from a template does: a new disk overlaying a registered volume."""
    with engine.store.transaction() as session:
        row = get_vm(session, vm)
        disks = [{**d.spec, "name": d.name} for d in row.devices if d.type == "disk"]
        vm_config.apply(session, row, {"disks": disks + [
            {"name": name, "size_mib": 256, "storage_domain": "data", "format": "qcow2",
             "interface": "virtio", "parent_volume_id": parent}]})
        device = next(d for d in row.devices if d.name == name)
        return dict(device.spec)


def test_new_disks_get_a_row_and_growing_updates_its_size(engine, host):
    root = engine.vms.info("vm1")[0]["disks"][0]
    assert _row(engine, root["volume_id"]) == {"name": "", "size_mib": 1024, "parent_id": None,
                                               "storage_domain": "data"}
    data = engine.vm_devices.disk("vm1", "data", settings={"size": "1GiB",
                                                           "storage_domain": "data"}).entity
    assert _row(engine, data["volume_id"])["size_mib"] == 1024
    engine.vm_devices.disk("vm1", "data", settings={"size": "2GiB"})
    assert _row(engine, data["volume_id"])["size_mib"] == 2048


def test_detach_leaves_a_floating_row_and_absent_removes_it_after_the_file(engine, host):
    data = engine.vm_devices.disk("vm1", "data", settings={"size": "1GiB",
                                                           "storage_domain": "data"}).entity
    engine.vm_devices.disk("vm1", "data", state="detached")
    assert _row(engine, data["volume_id"])["name"] == "data"
    engine.vm_devices.disk("vm1", "again", settings={"size": "1GiB", "storage_domain": "data"},
                           volume={"image_id": data["image_id"], "volume_id": data["volume_id"]})
    assert _row(engine, data["volume_id"])["name"] == ""
    engine.vm_devices.disk("vm1", "again", state="absent")
    assert host.deleted_volumes[-1]["volume"] == data["volume_id"]
    assert _row(engine, data["volume_id"]) is None


def test_attach_takes_only_a_free_registered_volume(engine, host):
    settings = {"size": "1GiB", "storage_domain": "data"}

    def attach(volume_id, image_id="base-img", **extra):
        return engine.vm_devices.disk("vm1", "x", settings={**settings, **extra},
                                      volume={"image_id": image_id, "volume_id": volume_id})

    with pytest.raises(InvalidSpec, match="not a registered volume") as err:
        attach("nowhere")
    assert err.value.details["field"] == "volume"
    root = engine.vms.info("vm1")[0]["disks"][0]
    with pytest.raises(InvalidSpec, match="is disk 'root' of VM 'vm1'") as err:
        attach(root["volume_id"], root["image_id"])
    assert err.value.details["field"] == "volume"
    with engine.store.transaction() as session:
        cluster = session.query(Cluster).one()
        session.add(Template(id="t1", name="tpl", cluster=cluster, spec={}))
    _add(engine, id="tpl-vol", template_id="t1", format="qcow2")
    with pytest.raises(InvalidSpec, match="belongs to template 'tpl'"):
        attach("tpl-vol")
    _add(engine, id="other-domain", storage_domain="elsewhere", format="qcow2")
    with pytest.raises(InvalidSpec, match="on storage domain 'elsewhere'"):
        attach("other-domain")
    _add(engine, id="floating", name="spare", format="qcow2")
    assert attach("floating").entity["volume_id"] == "floating"
    assert _row(engine, "floating")["name"] == ""


def test_a_thin_disk_renders_its_chain_for_the_agent(engine, host):
    _add(engine)
    spec = _thin_disk(engine)
    assert _row(engine, spec["volume_id"])["parent_id"] == "base-vol"
    assert spec["chain"] == [{"image_id": "base-img", "volume_id": "base-vol", "format": "raw",
                              "size_mib": 512}]
    xml = engine.vms.domain_xml("vm1")
    root = agent_domxml.parse_domain(xml)
    disk = next(d for d in root.iterfind("devices/disk")
                if d.find("source").get("file").endswith(spec["volume_id"]))
    store = disk.find("backingStore")
    assert store.get("type") == "file" and store.find("format").get("type") == "raw"
    assert store.find("source").get("file") == placeholders.storage("data", "base-img/base-vol")
    assert len(store.find("backingStore")) == 0
    refs = {v.volume: v for v in metadata.read(root).volumes}
    top = refs[spec["volume_id"]]
    assert (top.parent, top.parent_format, top.create) == ("base-img/base-vol", "raw", True)
    assert (refs["base-vol"].alias, refs["base-vol"].create) == ("", False)
    # The agent accepts exactly this chain.
    agent_domxml.resolve(xml, {k: "/x" for k in placeholders.KINDS}, {"data": "/srv/data"})


def test_an_overlay_stays_on_its_parents_domain_and_is_qcow2(engine, host):
    _add(engine, storage_domain="other")
    with pytest.raises(InvalidSpec, match="stays on its backing volume's storage domain"):
        _thin_disk(engine)
    with pytest.raises(InvalidSpec, match="backing volume nope is not registered"):
        _thin_disk(engine, parent="nope")


def test_hotplug_of_a_thin_disk_sends_its_chain(engine, host):
    _add(engine)
    engine.vms.ensure(VM, state="running")
    _add(engine, id="floating-thin", image_id="ft-img", format="qcow2", parent_id="base-vol",
         name="spare")
    added = engine.vm_devices.disk("vm1", "thin", settings={"size": "1GiB",
                                                            "storage_domain": "data"},
                                   volume={"image_id": "ft-img", "volume_id": "floating-thin"})
    assert added.entity["hotplugged"] is True and "chain" not in added.entity
    [(_, element, volume)] = host.plugged
    assert (volume["parent"], volume["parent_format"]) == ("base-img/base-vol", "raw")
    assert [c["volume"] for c in host.plugged_chains[-1]] == ["base-vol"]
    assert ET.tostring(element, encoding="unicode").count("<backingStore") == 2


def test_a_backing_volume_is_never_deleted_under_its_overlays(engine, host):
    engine.vms.ensure({**VM, "name": "vm2", "disks": []})
    root = engine.vms.info("vm1")[0]["disks"][0]
    _thin_disk(engine, vm="vm2", parent=root["volume_id"])  # vm2's disk overlays vm1's root
    with pytest.raises(Conflict, match="vm2 disk thin"):
        engine.vms.ensure({"name": "vm1"}, state="absent")
    assert _row(engine, root["volume_id"]) is not None and host.deleted_volumes == []
    with pytest.raises(Conflict, match="vm2 disk thin"):
        engine.vm_devices.disk("vm1", "root", state="absent")


def test_removing_a_vm_removes_its_disks_rows_but_not_their_backing(engine, host):
    _add(engine)
    spec = _thin_disk(engine)
    root = engine.vms.info("vm1")[0]["disks"][0]
    engine.vms.ensure({"name": "vm1"}, state="absent")
    assert {v["volume"] for v in host.deleted_volumes} == {root["volume_id"], spec["volume_id"]}
    assert _row(engine, root["volume_id"]) is None and _row(engine, spec["volume_id"]) is None
    assert _row(engine, "base-vol") is not None
    with engine.store.transaction(commit=False) as session:
        assert volumes.children(session, ["base-vol"]) == []


# SQLite serializes writers (BEGIN IMMEDIATE): the interleaving exists on PostgreSQL only.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_of_two_disks_taking_one_volume_at_once_only_one_gets_it(engine, host):
    engine.vms.ensure({**VM, "name": "vm2", "disks": []})
    _add(engine, id="floating", name="", format="qcow2")  # nothing to change in the row
    volume = {"image_id": "base-img", "volume_id": "floating"}
    settings = {"size": "512MiB", "storage_domain": "data"}
    with pytest.raises(StaleDataError):
        with engine.store.transaction() as session:
            # This writer found the volume free and has not written yet...
            volumes.attach(session, {**volume, "storage_domain": "data", "format": "qcow2"})
            # ...when another one takes it and commits.
            engine.vm_devices.disk("vm2", "x", settings=settings, volume=volume)
    # Its retry (retry_on_conflict re-runs the service) finds the volume taken.
    with pytest.raises(InvalidSpec, match="is disk 'x' of VM 'vm2'"):
        engine.vm_devices.disk("vm1", "y", settings=settings, volume=volume)
