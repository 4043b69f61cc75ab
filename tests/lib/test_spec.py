"""The VM spec is validated at the boundary; each error names its field."""

import pytest

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.spec import normalize_vm
from engine_lib.units import size_mib


def error_field(spec) -> str:
    with pytest.raises(InvalidSpec) as info:
        normalize_vm(spec)
    return info.value.field


@pytest.mark.parametrize("value, mib", [(256, 256), ("512MiB", 512), ("4GiB", 4096),
                                        ("1.5GiB", 1536), (" 2 G", 2048), ("1TiB", 1024**2)])
def test_sizes_accept_units_or_plain_mib(value, mib):
    assert size_mib("memory", value) == mib


@pytest.mark.parametrize("value", [0, -1, "-5MiB", "0GiB", "12 parsecs", True, None, "1KiB"])
def test_bad_sizes_are_refused(value):
    with pytest.raises(InvalidSpec):
        size_mib("memory", value)


def test_a_vm_without_a_name_is_refused():
    assert error_field({"memory": 128}) == "name"


def test_negative_memory_names_the_field():
    with pytest.raises(InvalidSpec) as info:
        normalize_vm({"name": "a", "memory": -128})
    assert info.value.field == "memory"
    assert "greater than zero" in info.value.message


@pytest.mark.parametrize("spec, field", [
    ({"name": "a", "colour": "red"}, "colour"),
    ({"name": "bad/name"}, "name"),
    ({"name": "a", "disks": [{"name": "d", "size": 1}]}, "disks[0].storage_domain"),
    ({"name": "a", "disks": [{"name": "d", "size": 1, "storage_domain": "s", "interface": "ide"}]},
     "disks[0].interface"),
    ({"name": "a", "disks": [{"name": "d", "size": 1, "storage_domain": "s"},
                             {"name": "d", "size": 2, "storage_domain": "s"}]}, "disks[1].name"),
    ({"name": "a", "nics": [{"name": "n", "network": "x", "mac": "not-a-mac"}]}, "nics[0].mac"),
    ({"name": "a", "nics": [{"name": "n", "network": "x", "mac": "01:00:5e:00:00:01"}]},
     "nics[0].mac"),
    ({"name": "a", "nics": [{"name": "n1", "network": "x", "mac": "56:6f:00:00:00:01"},
                            {"name": "n2", "network": "x", "mac": "56:6F:00:00:00:01"}]},
     "nics[1].mac"),
    ({"name": "a", "cpu": {"sockets": 0}}, "cpu.sockets"),
    ({"name": "a", "machine": "isapc"}, "machine"),
    ({"name": "a", "description": "bell\x07"}, "description"),
    ({"name": "a", "kernel": "images:../../etc/shadow"}, "kernel"),
    ({"name": "a", "custom_properties": {"1x": "v"}}, "custom_properties.1x"),
])
def test_invalid_specs_name_the_field(spec, field):
    assert error_field(spec) == field


def test_partial_spec_keeps_only_given_keys():
    assert normalize_vm({"name": "a", "memory": "1GiB"}) == {"name": "a", "memory_mib": 1024}


def test_defaults_fill_sub_objects():
    out = normalize_vm({"name": "a", "disks": [{"name": "d", "size": "1GiB",
                                                 "storage_domain": "data"}],
                        "nics": [{"name": "n", "network": "mgmt", "mac": "56-6F-00-00-00-0A"}]})
    assert out["disks"][0] == {"name": "d", "size_mib": 1024, "format": "qcow2",
                               "interface": "virtio", "storage_domain": "data", "bootable": False,
                               "boot_order": None, "readonly": False, "shareable": False,
                               "cache": "default", "io": "default", "discard": "ignore",
                               "iotune": {}, "serial": ""}
    assert out["nics"][0]["mac"] == "56:6f:00:00:00:0a"
