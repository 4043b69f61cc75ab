"""The issue's invalid specs: one clear error each, naming the field."""

import pytest

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.previews import render_spec

DISK = {"name": "root", "size": "1GiB", "storage_domain": "data"}


def refused(spec) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as info:
        render_spec({"name": "vm", **spec})
    return info.value


@pytest.mark.parametrize("spec, field, reason", [
    ({"disks": [{**DISK, "interface": "ide"}]}, "disks[0].interface", "must be one of"),
    ({"nics": [{"name": "n", "network": "br0", "model": "ne2k_pci"}]}, "nics[0].model",
     "must be one of"),
    ({"video": "cirrus"}, "video.model", "must be one of"),
    ({"cpu": {"mode": "host"}}, "cpu.mode", "must be one of"),
    ({"memory": 0}, "memory", "greater than zero"),
    ({"disks": [{**DISK, "size": "-1GiB"}]}, "disks[0].size", "greater than zero"),
    ({"balloon": {"guarantee": 0}}, "balloon.guarantee", "greater than zero"),
    ({"disks": [DISK, DISK]}, "disks[1].name", "duplicate name"),
    ({"nics": [{"name": "a", "network": "b", "mac": "56:6f:00:00:00:01"},
               {"name": "b", "network": "b", "mac": "56-6F-00-00-00-01"}]}, "nics[1].mac",
     "duplicate mac"),
    ({"cpu": {"sockets": 2, "cores": 4, "max_vcpus": 4}}, "cpu.max_vcpus", "more than max_vcpus"),
    ({"cpu": {"cores": 3, "max_vcpus": 8}}, "cpu.max_vcpus", "multiple of cores x threads"),
    ({"disks": [{**DISK, "boot_order": 1}], "nics": [{"name": "n", "network": "b",
                                                      "boot_order": 1}]},
     "nics[0].boot_order", "boot order 1 is already used by disks[0]"),
    ({"disks": [{**DISK, "boot_order": 2}], "cdrom": {"iso": "", "boot_order": 2}},
     "cdrom.boot_order", "already used"),
    ({"memory": "4GiB", "max_memory": "2GiB"}, "max_memory", "less than memory"),
    ({"firmware": {"type": "bios", "secure_boot": True}}, "firmware.secure_boot", "uefi"),
    ({"machine": "pc", "firmware": {"type": "uefi", "secure_boot": True}},
     "firmware.secure_boot", "q35"),
    ({"numa": {"nodes": 4}}, "numa.nodes", "vCPUs"),
    ({"memory": 1000, "hugepages": "1GiB"}, "hugepages", "pages"),
    ({"graphics": {"type": "vnc", "password": "much-too-long"}}, "graphics.password", "longer"),
    ({"graphics": {"listen": "localhost"}}, "graphics.listen", "not an IP address"),
    ({"cloud_init": {"ssh_keys": ["not a key"]}}, "cloud_init.ssh_keys[0]", "OpenSSH"),
    ({"cloud_init": {"hostname": "bad_host!"}}, "cloud_init.hostname", "host name"),
    ({"cloud_init": {"user_data": "x\x00y"}}, "cloud_init.user_data", "U+0000"),
    ({"disks": [{"name": "l", "lun": "/etc/passwd"}]}, "disks[0].lun", "must name a LUN"),
    ({"disks": [{"name": "l", "lun": "sdb", "size": 5}]}, "disks[0].size", "lun"),
    ({"disks": [{**DISK, "io": "native"}]}, "disks[0].io", "cache none"),
    ({"cpu": {"model": "Skylake", "mode": "host-model"}}, "cpu.model", "mode custom"),
    ({"tpm": {"model": "tpm-crb", "version": "1.2"}}, "tpm.version", "2.0"),
    ({"high_availability": {"priority": 101}}, "high_availability.priority", "0 to 100"),
    ({"placement": {"hosts": ["h1", "h1"]}}, "placement.hosts[1]", "duplicate"),
    ({"initrd": "images:initrd"}, "initrd", "needs a kernel"),
    ({"cdrom": "isos:../../etc/shadow"}, "cdrom.iso", "inside the storage domain"),
    ({"nics": [{"name": "n", "network": "a-very-long-bridge-name"}]}, "nics[0].network",
     "15 characters"),
])
def test_each_invalid_spec_gets_one_clear_error(spec, field, reason):
    error = refused(spec)
    assert error.field == field
    assert reason in error.message and error.message.startswith(field + ":")


def test_sizes_accept_units_or_plain_mib_everywhere():
    xml = render_spec({"name": "vm", "memory": 2048, "max_memory": "4GiB",
                       "balloon": {"guarantee": "512MiB"}})
    assert "<memory unit='MiB'>2048</memory>" in xml
    assert "<maxMemory slots='16' unit='MiB'>4096</maxMemory>" in xml
    assert "guarantee_mib='512'" in xml


def test_cpu_mode_defaults_follow_the_clusters_virt_type():
    assert "<cpu mode='host-model' check='partial'>" in render_spec({"name": "vm"}, "kvm")
    # TCG cannot model the host CPU: libvirt's default, which the lab guests boot with.
    assert "<cpu>" in render_spec({"name": "vm"}, "qemu")
