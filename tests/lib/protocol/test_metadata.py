"""Domain metadata as the engine writes it and the agent reads it back."""

from dataclasses import replace

from engine_lib.agent import domxml
from engine_lib.domxml import render
from engine_lib.protocol import metadata
from engine_lib.services import vm_config
from engine_lib.spec import normalize_vm

CHAIN = [{"image_id": "img-t", "volume_id": "vol-t", "format": "qcow2", "size_mib": 64},
         {"image_id": "img-b", "volume_id": "vol-b", "format": "raw", "size_mib": 32}]


def test_a_thin_disks_chain_round_trips_through_the_metadata():
    vm = vm_config.build_offline(normalize_vm(
        {"name": "thin", "disks": [{"name": "root", "size": "64MiB", "storage_domain": "data"}]}))
    [disk] = [d for d in vm.devices if d.name == "root"]
    disk.spec = {**disk.spec, "chain": CHAIN}
    top, tpl, base = metadata.read(domxml.parse_domain(render(vm))).volumes
    assert (top.alias, top.parent, top.parent_format, top.create) == \
        (disk.user_alias, "img-t/vol-t", "qcow2", True)
    assert tpl == metadata.VolumeRef("", "data", "img-t", "vol-t", "qcow2", 64, disk="root",
                                     parent="img-b/vol-b", parent_format="raw")
    assert base == replace(tpl, image="img-b", volume="vol-b", format="raw", size_mib=32,
                           parent="", parent_format="")
