"""A VM spec can name no host path, and no input makes validation crash or run long."""

import time

import pytest
import yaml

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.spec import normalize_vm
from engine_lib.units import size_mib

PLACEHOLDER = "/kestrel-placeholder/console/6f1d2c9e-8a4b-4c1e-9f7a-0123456789ab.log"
IMAGE = "0b5e7c1a-1111-4222-8333-444455556666"


def refused(spec: dict, field: str, reason: str, within_s: float = 1.0) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidSpec) as caught:
        normalize_vm({"name": "vm", **spec})
    assert time.monotonic() - started < within_s
    assert caught.value.field == field, caught.value.message
    assert reason in caught.value.reason


@pytest.mark.parametrize("spec, field", [
    ({"kernel": "/etc/kestrel/pki/agent.key"}, "kernel"),
    ({"initrd": "/etc/shadow"}, "initrd"),
    ({"cdrom": "/etc/shadow"}, "cdrom.iso"),
    ({"cdrom": {"iso": "/dev/sda"}}, "cdrom.iso"),
])
def test_a_boot_file_cannot_be_a_host_path(spec, field):
    refused(spec, field, "is a host path; name a file on a storage domain")


@pytest.mark.parametrize("lun", ["/dev/sda", "/dev/mem", "/dev/disk/by-id/wwn-0x5000"])
def test_a_lun_is_a_registered_name_never_a_device_path(lun):
    refused({"disks": [{"name": "d", "lun": lun}]}, "disks[0].lun", "must name a LUN")


def test_a_boot_file_cannot_be_a_vm_volume():
    refused({"cdrom": f"data:{IMAGE}/{IMAGE}"}, "cdrom.iso", "inside a disk image directory")
    assert normalize_vm({"name": "vm", "cdrom": "isos:debian.iso"})["cdrom"]["iso"] == \
        "isos:debian.iso"


@pytest.mark.parametrize("spec, field", [
    ({"kernel": PLACEHOLDER}, "kernel"),
    ({"cdrom": PLACEHOLDER}, "cdrom.iso"),
    ({"description": PLACEHOLDER}, "description"),
    ({"cmdline": " " + PLACEHOLDER}, "cmdline"),
    ({"graphics": {"type": "spice", "password": "/kestrel-placeholder/nvram/x.fd"}},
     "graphics.password"),
    ({"disks": [{"name": "d", "lun": PLACEHOLDER}]}, "disks[0].lun"),
    ({"cloud_init": {"user_data": PLACEHOLDER}}, "cloud_init.user_data"),
    ({"cloud_init": {"network_config": PLACEHOLDER}}, "cloud_init.network_config"),
])
def test_strings_under_the_placeholder_prefix_are_refused(spec, field):
    refused(spec, field, "reserved for the engine's host placeholders")


@pytest.mark.parametrize("value", ["9" * 400, "9" * 400 + "GiB", "1" + "0" * 20 + "KiB",
                                   "1e400", 10**400, -(10**5000)],
                         ids=["400-digits", "400-digits-GiB", "21-digits", "exponent",
                              "int-400-digits", "int-5000-digits"])
def test_a_size_with_many_digits_is_refused(value):
    with pytest.raises(InvalidSpec) as caught:
        size_mib("memory", value)
    assert caught.value.field == "memory"
    refused({"memory": value}, "memory", "")


def test_sizes_past_two_pib_are_refused():
    assert size_mib("memory", "2047TiB") == 2047 * 1024**2
    refused({"memory": "4096TiB"}, "memory", "2 PiB")


def nested(depth: int):
    top = current = {}
    for _ in range(depth):
        current["a"] = {}
        current = current["a"]
    return top


@pytest.mark.parametrize("depth", [900, 100_000])
def test_deep_nesting_is_refused_without_recursion(depth):
    refused({"cloud_init": {"network_config": nested(depth)}}, "cloud_init.network_config"
            + ".a" * 14, "nested more than 16 levels deep")
    lists: list = []
    current = lists
    for _ in range(depth):
        current.append([])
        current = current[0]
    refused({"tags": lists}, "tags" + "[0]" * 15, "nested more than 16 levels deep")


def test_a_hundred_thousand_tags_are_refused_at_once():
    refused({"tags": [f"t{i}" for i in range(100_000)]}, "tags", "has 100000 items; at most 1024")
    assert len(normalize_vm({"name": "vm", "tags": [f"t{i}" for i in range(1024)]})["tags"]) \
        == 1024


def test_a_yaml_alias_bomb_in_network_config_is_refused_before_it_is_serialized():
    bomb = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(8))
    assert len(bomb) < 1024
    config = yaml.safe_load(bomb)  # 9**9 strings once expanded
    with pytest.raises(InvalidSpec) as caught:
        started = time.monotonic()
        normalize_vm({"name": "vm", "cloud_init": {"network_config": config}})
    assert time.monotonic() - started < 2
    assert caught.value.field.startswith("cloud_init.network_config")
    assert "more than 50000 values" in caught.value.reason


@pytest.mark.parametrize("listen", ["0.0.0.0", "10.0.0.5", "::"])
def test_graphics_off_loopback_needs_a_password(listen):
    refused({"graphics": {"listen": listen}}, "graphics.password", f"graphics.listen is {listen}")
    assert normalize_vm({"name": "vm", "graphics": {"listen": listen, "password": "s3cret"}})
    assert normalize_vm({"name": "vm", "graphics": {"listen": "::1"}})["graphics"]["password"] \
        == ""
