"""Every device of a real VM, stored: ids and MACs created once, XML stable across runs."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from engine_lib import cli
from engine_lib.domxml import render
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.common import get_vm
from engine_lib.services.previews import render_spec_stored

CASES = yaml.safe_load((Path(__file__).parent.parent / "golden" / "cases.yaml").read_text())
EVERYTHING = {**CASES["everything"]["spec"], "cluster": "c1"}


@pytest.fixture
def cluster(cluster, engine):
    """The cluster, allowing the custom property the "everything" VM sets."""
    engine.clusters.ensure(cluster, custom_properties={"hook": "enabled"})
    return cluster


@pytest.fixture(autouse=True)
def shared_lun(request):
    """The LUN the "everything" case names, registered as an administrator would."""
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine").luns.register("shared0", "/dev/mapper/shared0")


def test_a_full_vm_is_stored_and_rerenders_byte_identical(engine, cluster):
    first = engine.vms.ensure(EVERYTHING, state="present")
    assert first.changed
    again = engine.vms.ensure(EVERYTHING, state="present")
    assert again.changed is False
    assert engine.vms.domain_xml("everything") == first.diff["after"]
    root = ET.fromstring(first.diff["after"])
    aliased = [d for d in root.find("devices") if d.tag != "graphics"]
    assert len(aliased) >= 20
    assert all(d.find("alias").get("name").startswith("ua-") for d in aliased)
    assert root.find(".//{https://kestrel.virt/xmlns/vm/1}device").get("type") == "graphics"


def test_macs_are_kept_and_never_duplicated_in_the_cluster(engine, cluster):
    engine.vms.ensure(EVERYTHING, state="present")
    other = {**EVERYTHING, "name": "other", "nics": EVERYTHING["nics"][:2]}
    engine.vms.ensure(other, state="present")
    macs = [m.get("address") for name in ("everything", "other")
            for m in ET.fromstring(engine.vms.domain_xml(name)).iter("mac")]
    assert len(macs) == 6 and len(set(macs)) == 6
    before = engine.vms.domain_xml("other")
    engine.vms.ensure({"name": "other", "memory": "8GiB"}, state="present")
    after_macs = [m.get("address") for m in ET.fromstring(engine.vms.domain_xml("other")).iter("mac")]
    assert after_macs == [m.get("address") for m in ET.fromstring(before).iter("mac")]


def test_partial_updates_keep_what_they_do_not_name(engine, cluster):
    engine.vms.ensure(EVERYTHING, state="present")
    engine.vms.ensure({"name": "everything", "graphics": False, "tpm": False}, state="present")
    root = ET.fromstring(engine.vms.domain_xml("everything"))
    assert root.find("devices/graphics") is None and root.find("devices/tpm") is None
    assert root.find("devices/rng") is not None
    assert root.find("os").get("firmware") == "efi"
    assert root.find("vcpu").get("current") == "4" and root.findtext("vcpu") == "8"


def test_a_boot_order_clash_across_a_partial_update_names_the_field(engine, cluster):
    engine.vms.ensure({"name": "b", "cluster": "c1", "disks": [
        {"name": "root", "size": 64, "storage_domain": "data", "boot_order": 1}]})
    with pytest.raises(InvalidSpec) as info:
        engine.vms.ensure({"name": "b", "nics": [{"name": "n", "network": "br0",
                                                  "boot_order": 1}]})
    assert info.value.field == "nics[0].boot_order"


def test_more_vcpus_than_the_stored_max_is_refused(engine, cluster):
    engine.vms.ensure({"name": "c", "cluster": "c1", "cpu": {"cores": 2, "max_vcpus": 4}})
    with pytest.raises(InvalidSpec) as info:
        engine.vms.ensure({"name": "c", "cpu": {"cores": 2, "sockets": 4, "max_vcpus": 4}})
    assert info.value.field == "cpu.max_vcpus"


def test_ha_and_placement_are_stored_in_canonical_form(engine, cluster):
    from engine_lib.model import Vm
    from engine_lib.services.common import get_vm

    engine.vms.ensure({"name": "ha", "cluster": "c1", "high_availability": True,
                       "placement": {"hosts": ["h1"]}})
    with engine.store.transaction(commit=False) as session:
        vm: Vm = get_vm(session, "ha")
        assert vm.high_availability == {"enabled": True, "priority": 0}
        assert vm.placement == {"hosts": ["h1"], "affinity_groups": [], "hooks": []}


def test_xml_render_of_a_stored_vm_uses_its_ids_and_writes_nothing(engine, cluster):
    engine.vms.ensure(EVERYTHING, state="present")
    with engine.store.transaction(commit=False) as session:
        stored = render(get_vm(session, "everything"))  # domain_xml masks the secrets
    assert render_spec_stored(engine.store, EVERYTHING) == stored
    preview = render_spec_stored(engine.store, {**EVERYTHING, "name": "new-one"})
    assert "56:6f:4b:00:00:00" not in preview  # the cluster's MACs are taken
    assert [vm["name"] for vm in engine.vms.info()] == ["everything"]


def test_kestrel_xml_render_prints_the_same_bytes_twice(tmp_path, capsys):
    spec = tmp_path / "vm.yaml"
    spec.write_text(yaml.safe_dump(CASES["everything"]["spec"]))
    assert cli.main(["xml", "render", str(spec)]) == 0
    first = capsys.readouterr().out
    assert cli.main(["xml", "render", str(spec)]) == 0
    assert capsys.readouterr().out == first and first.startswith("<domain type='kvm'>")


def test_kestrel_xml_render_exits_2_naming_the_field(tmp_path, capsys):
    spec = tmp_path / "vm.json"
    spec.write_text('{"name": "x", "nics": [{"name": "n", "network": "b", "model": "ne2k"}]}')
    assert cli.main(["xml", "render", str(spec)]) == 2
    assert "nics[0].model" in capsys.readouterr().err
