"""Cloud-init payload, statistics and hotplug against real libvirtd and QEMU in lab hosts."""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from functools import partial

import pytest
from agent_fixtures import guest_domain_xml

from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import Conflict, HookError, NotFound

pytestmark = pytest.mark.lab

BOOT_TIMEOUT = 90.0
PAYLOAD_ROOT = "/var/lib/kestrel/payload"  # [paths] payload in agent_fixtures
HOOK_DIR = "/etc/kestrel/hooks/before_device_create"
BRIDGE = "kestrelmgmt"  # every lab host has it (kestrel_lab.network)
VIRSH = ["virsh", "-c", "qemu:///system"]
P = metadata.PREFIX

USER_DATA = "#cloud-config\nhostname: seeded\nruncmd:\n  - echo hello from kestrel\n"
META_DATA = '{"instance-id": "i-kestrel", "local-hostname": "seeded"}\n'
NETWORK_CONFIG = "version: 2\nethernets: {}\n"


def wait_for_console(client, vm_id: str, text: str) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        log = client.console_log(vm_id, 65536)
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.5)


@pytest.fixture
def cleanup(agents):
    """(agent, vm id, volumes) to destroy, remove and delete after the test."""
    started: list[tuple] = []
    yield started
    for agent, vm_id, volumes in started:
        client = agent.client()
        for step in (partial(client.destroy_vm, vm_id), partial(client.remove_vm, vm_id),
                     partial(client.delete_volumes, volumes)):
            try:
                step()
            except Exception:
                pass


def with_payload(xml: str, vm_id: str) -> str:
    """The payload metadata and CD-ROM exactly as engine_lib.domxml renders them for i440fx."""
    alias = f"ua-{uuid.uuid4()}"
    files = [("meta-data", META_DATA), ("user-data", USER_DATA),
             ("network-config", NETWORK_CONFIG)]
    seed = (f"<{P}:payload alias='{alias}' type='nocloud'>"
            + "".join(f"<{P}:file name='{name}'>{content}</{P}:file>" for name, content in files)
            + f"</{P}:payload>")
    cdrom = (f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
             f"<source file='{placeholders.payload(vm_id)}'/>"
             f"<target dev='hdc' bus='ide'/><readonly/><alias name='{alias}'/></disk>")
    xml = xml.replace(f"</{P}:vm>", f"{seed}</{P}:vm>", 1)
    return xml.replace("<serial type='pty'>", f"{cdrom}\n    <serial type='pty'>", 1)


def start(agent, cleanup, payload: bool = False, bridge: str | None = None) -> str:
    vm_id = str(uuid.uuid4())
    xml, volume = guest_domain_xml(vm_id, bridge=bridge)
    if payload:
        xml = with_payload(xml, vm_id)
    cleanup.append((agent, vm_id, [volume]))
    assert agent.client().start_vm(xml)["started"] is True
    return vm_id


def test_the_guest_reads_the_cloud_init_payload_back(agents, lab_guest, cleanup):
    agent = agents[0]
    client = agent.client()
    vm_id = start(agent, cleanup, payload=True)
    iso = f"{PAYLOAD_ROOT}/{vm_id}.iso"
    assert "Volume id: cidata" in agent.run(["isoinfo", "-d", "-i", iso], text=True).stdout
    # The user-data (a root password, often) is root's alone: QEMU reads the ISO because
    # libvirt hands it over while the VM runs, and libvirt's read-only socket, which
    # shows the domain's metadata to anyone allowed to connect, no longer carries it.
    mode = agent.run(["stat", "-c", "%a", iso], text=True).stdout.strip()
    assert mode == "600"
    readonly_xml = agent.run(["virsh", "-r", "-c", "qemu:///system", "dumpxml", vm_id],
                             text=True).stdout
    assert "hello from kestrel" not in readonly_xml and f"{P}:payload" not in readonly_xml

    log = wait_for_console(client, vm_id, "kestrel-guest: cdrom user-data: ")
    assert "kestrel-guest: up" in log  # the guest's existing lines are still there
    assert "kestrel-guest: cdrom label cidata" in log
    for name, content in (("user-data", USER_DATA), ("meta-data", META_DATA),
                          ("network-config", NETWORK_CONFIG)):
        for line in content.splitlines():
            assert f"kestrel-guest: cdrom {name}: {line}" in log, log[-3000:]

    client.destroy_vm(vm_id)
    client.remove_vm(vm_id)
    assert agent.run(["test", "-e", iso], check=False).returncode == 1  # removed with the VM


def test_stats_report_cpu_memory_disks_nics_and_the_host(agents, lab_guest, cleanup):
    agent = agents[-1]
    client = agent.client()
    vm_id = start(agent, cleanup, bridge=BRIDGE)
    wait_for_console(client, vm_id, "kestrel-guest: nics")
    first = client.stats()
    time.sleep(1.0)
    second = client.stats()

    host = second["host"]
    assert host["vm_count"] >= 1 and host["running_vms"] >= 1
    assert 0 < host["free_memory_mib"] < host["memory_mib"]
    assert first["host"]["cpu"]["idle_ns"] <= host["cpu"]["idle_ns"]
    assert host["cpu"]["percent"] is not None
    assert len(host["load"]) == 3 and 0 < host["used_memory_mib"] < host["memory_mib"]
    rates = ("net_rx_bps", "net_tx_bps", "disk_read_bps", "disk_write_bps")
    assert all(host[key] >= 0 for key in rates)

    vm = next(vm for vm in second["vms"] if vm["id"] == vm_id)
    assert set(vm["rates"]) == set(rates) and all(vm["rates"][key] >= 0 for key in rates)
    assert vm["status"] == "Up" and vm["state"] == "running"
    assert vm["cpu"]["time_ns"] > 0 and vm["cpu"]["percent"] is not None
    assert vm["memory"]["current_kib"] == 128 * 1024
    [disk] = vm["disks"]
    assert disk["name"] == "vda" and disk["capacity"] == 64 * 1024 * 1024
    assert disk["rd_reqs"] > 0  # the guest's kernel probed its disk
    [nic] = vm["nics"]
    assert nic["name"].startswith("vnet") and "rx_bytes" in nic and "tx_pkts" in nic
    assert client.vm_stats(vm_id)["disks"][0]["name"] == "vda"


def _live(client, vm_id: str) -> ET.Element:
    return ET.fromstring(client.vm_xml(vm_id))


def _aliases(root: ET.Element) -> set[str]:
    return {node.get("name") for node in root.iterfind("devices/*/alias")}


def test_hotplug_and_unplug_a_disk_and_a_nic(agents, lab_guest, cleanup):
    agent = agents[0]
    client = agent.client()
    vm_id = start(agent, cleanup)
    wait_for_console(client, vm_id, "kestrel-guest: nics")  # booted: it can release devices

    disk_alias, nic_alias = f"ua-{uuid.uuid4()}", f"ua-{uuid.uuid4()}"
    volume = {"domain": "data", "image": str(uuid.uuid4()), "volume": str(uuid.uuid4()),
              "format": "qcow2", "size_mib": 16, "alias": disk_alias, "create": True}
    cleanup[-1][2].append(volume)
    source = placeholders.storage("data", f"{volume['image']}/{volume['volume']}")
    disk_xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file='{source}'/>"
                f"<target dev='vdb' bus='virtio'/><alias name='{disk_alias}'/></disk>")
    nic_xml = (f"<interface type='bridge'><source bridge='{BRIDGE}'/><model type='virtio'/>"
               f"<alias name='{nic_alias}'/></interface>")

    agent.run(["mkdir", "-p", HOOK_DIR])
    agent.run(["chmod", "755", "/etc/kestrel/hooks", HOOK_DIR])
    script = f"{HOOK_DIR}/50_serial"
    agent.run(["sh", "-c", 'cat > "$1" && chmod 755 "$1"', "install", script],
              input=b'#!/bin/sh\nsed -i "s|</disk>|<serial>hooked</serial></disk>|" '
                    b'"$_hook_domxml"\n')
    try:
        plugged = ET.fromstring(client.plug_device(vm_id, disk_xml, volume)["xml"])
    finally:
        agent.run(["rm", "-f", script])
    assert plugged.find("address").get("type") == "pci"
    assert plugged.findtext("serial") == "hooked"  # the XML the hook left was attached
    client.plug_device(vm_id, nic_xml)

    live = _live(client, vm_id)
    assert {disk_alias, nic_alias} <= _aliases(live)
    assert len(client.vm_stats(vm_id)["disks"]) == 2
    inactive = ET.fromstring(agent.run([*VIRSH, "dumpxml", "--inactive", vm_id],
                                       text=True).stdout)
    assert {disk_alias, nic_alias} <= _aliases(inactive)  # survives a restart too

    assert client.unplug_device(vm_id, nic_alias)["removed"] is True
    assert client.unplug_device(vm_id, disk_alias)["removed"] is True
    assert not {disk_alias, nic_alias} & _aliases(_live(client, vm_id))
    inactive = ET.fromstring(agent.run([*VIRSH, "dumpxml", "--inactive", vm_id],
                                       text=True).stdout)
    assert not {disk_alias, nic_alias} & _aliases(inactive)


def test_a_duplicate_an_unknown_or_a_hook_refused_device_changes_nothing(agents, lab_guest, cleanup):
    agent = agents[-1]
    client = agent.client()
    vm_id = start(agent, cleanup, bridge=BRIDGE)
    live = _live(client, vm_id)
    existing = live.find("devices/interface/alias").get("name")
    with pytest.raises(Conflict, match="already has a device"):
        client.plug_device(vm_id, f"<interface type='bridge'><source bridge='{BRIDGE}'/>"
                                  f"<alias name='{existing}'/></interface>")
    with pytest.raises(NotFound):
        client.unplug_device(vm_id, f"ua-{uuid.uuid4()}")

    agent.run(["mkdir", "-p", HOOK_DIR])
    agent.run(["chmod", "755", "/etc/kestrel/hooks", HOOK_DIR])
    script = f"{HOOK_DIR}/10_refuse"
    agent.run(["sh", "-c", 'cat > "$1" && chmod 755 "$1"', "install", script],
              input=b"#!/bin/sh\necho 'no NICs on Fridays' >&2\nexit 3\n")
    try:
        with pytest.raises(HookError) as error:
            client.plug_device(vm_id, f"<interface type='bridge'><source bridge='{BRIDGE}'/>"
                                      f"<alias name='ua-{uuid.uuid4()}'/></interface>")
    finally:
        agent.run(["rm", "-f", script])
    assert "before_device_create/10_refuse" in error.value.message
    assert "no NICs on Fridays" in error.value.message
    assert _aliases(_live(client, vm_id)) == _aliases(live)  # nothing changed
