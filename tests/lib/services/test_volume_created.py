"""The engine lets an agent create a disk's volume only until the disk has run."""

from engine_lib.agent import domxml as agent_domxml
from engine_lib.model import Volume
from engine_lib.protocol import metadata

VM = {"name": "vm1", "cluster": "c1", "memory": "256MiB",
      "disks": [{"name": "root", "size": "1GiB", "storage_domain": "data"}]}


def _volumes(xml):
    return {v.disk: v.create for v in metadata.read(agent_domxml.parse_domain(xml)).volumes}


def test_only_the_first_start_may_create_the_volume(engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure(VM, state="running")
    assert _volumes(agents["10.0.0.1"].last_xml) == {"root": True}
    engine.vms.ensure({"name": "vm1"}, state="stopped")
    engine.vms.ensure({"name": "vm1"}, state="running")
    assert _volumes(agents["10.0.0.1"].last_xml) == {"root": False}


def test_an_attached_volume_is_never_created(engine, cluster):
    engine.vms.ensure({**VM, "disks": []}, state="present")
    with engine.store.transaction() as session:  # a floating disk, registered
        session.add(Volume(id="vol-1", image_id="img-1", storage_domain="data",
                           size_mib=1024, name="old"))
    engine.vm_devices.disk("vm1", "old", settings={"size": "1GiB", "storage_domain": "data"},
                           volume={"image_id": "img-1", "volume_id": "vol-1"})
    engine.vm_devices.disk("vm1", "new", settings={"size": "1GiB", "storage_domain": "data"})
    assert _volumes(engine.vms.domain_xml("vm1")) == {"old": False, "new": True}
