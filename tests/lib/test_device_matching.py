"""Device matching: live domain XML correlated with the database, by rule and with reasons.

Golden live XML in tests/lib/golden/live was produced by a real libvirtd (QEMU 7.2,
libvirt 9.0) in tests/system/test_device_matching.py (KESTREL_REGENERATE_LIVE=1), with
the engine's device rows at that moment; the rest are small hand-made cases.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from engine_lib import cli
from engine_lib.agent.devices_hash import DevicesHashes, devices_hash
from engine_lib.devices import correlate, live, parse, parse_devices
from engine_lib.devices.live import BLOCKS
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.previews import render_spec

LIVE = Path(__file__).parent / "golden" / "live"


@dataclass
class Row:
    """A device row as correlate() reads it (the ORM row has these attributes)."""

    id: str
    type: str
    name: str | None = None
    managed: bool = True
    plugged: bool = True
    alias: str = ""
    address: dict = field(default_factory=dict)
    guest_name: str = ""
    spec: dict = field(default_factory=dict)


def golden(name: str) -> tuple[str, list[Row]]:
    rows = json.loads((LIVE / f"{name}.devices.json").read_text())
    return (LIVE / f"{name}.xml").read_text(), [Row(**row) for row in rows]


def by_reason(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return counts


# -- golden live XML from a real libvirtd -------------------------------------------------

def test_a_rich_vm_matches_completely_against_what_the_engine_stored():
    xml, rows = golden("rich")
    result = correlate(rows, parse(xml)[1])
    assert result.unmanaged_new == [] and result.unplugged == []
    assert len(result.matched) == len(rows)
    reasons = by_reason(result.matched)
    assert reasons["ua- alias"] == sum(1 for r in rows if r.managed) - 1
    assert reasons["the VM's only graphics"] == 1  # libvirt gives graphics no alias
    assert reasons["unmanaged, same libvirt alias"] == 19  # q35 root ports, usb, input, ...
    assert reasons["unmanaged, same attributes"] == 1  # <audio id='1' type='none'/>
    assert [f.reason for f in result.folded] == [
        f"shares alias {next(r.alias for r in rows if r.type == 'serial')} with the serial"]


def test_a_nic_plugged_behind_the_engines_back_is_new_and_unmanaged_with_its_address():
    _, rows = golden("started")
    xml = (LIVE / "hotplugged.xml").read_text()
    result = correlate(rows, parse(xml)[1])
    assert result.unplugged == []
    [new] = result.unmanaged_new
    assert (new.live.kind, new.live.mac, new.live.alias) == ("interface", "52:54:00:5e:00:42",
                                                             "net0")
    assert new.live.address == {"type": "pci", "domain": "0x0000", "bus": "0x00",
                                "slot": "0x04", "function": "0x0"}
    assert new.reason == "hotplugged outside the engine (no ua- alias)"


def test_a_nic_gone_from_the_live_xml_is_unplugged_if_ours_and_deleted_if_not():
    xml, _ = golden("started")
    _, rows = golden("hotplugged")
    result = correlate(rows, parse(xml)[1])
    assert [(g.device.type, g.device.spec["mac"], g.action) for g in result.unplugged] == [
        ("interface", "52:54:00:5e:00:42", "deleted")]
    ours = next(r for r in rows if r.name == "nic1")
    without_nic1 = xml.replace(f"<alias name='{ours.alias}'/>", "<alias name='net9'/>")
    result = correlate(rows, parse(without_nic1)[1])
    gone = {g.device.id: (g.action, g.reason) for g in result.unplugged}
    assert gone[ours.id] == ("unplugged", "not in the live XML: unplugged from the running VM")


# -- hand-made cases: one rule each -------------------------------------------------------

def domain(*devices: str) -> str:
    return ("<domain type='qemu'><uuid>00000000-0000-0000-0000-000000000001</uuid><devices>"
            "<emulator>/usr/bin/qemu-system-x86_64</emulator>" + "".join(devices)
            + "</devices></domain>")


PCI = "<address type='pci' domain='0x0000' bus='0x00' slot='0x{:02x}' function='0x0'/>"


def test_single_devices_without_our_alias_match_the_vms_only_one_of_their_type():
    rows = [Row("b", "memballoon"), Row("r", "rng"), Row("w1", "watchdog"),
            Row("w2", "watchdog")]
    live = parse(domain(f"<memballoon model='virtio'><alias name='balloon0'/>{PCI.format(3)}"
                        "</memballoon>",
                        "<rng model='virtio'><alias name='rng0'/></rng>",
                        "<watchdog model='i6300esb'><alias name='watchdog0'/></watchdog>"))[1]
    result = correlate(rows, live)
    assert {m.device.id: m.reason for m in result.matched} == {
        "b": "the VM's only memballoon", "r": "the VM's only rng"}
    # Two watchdogs in the database: no guessing which one libvirt runs.
    assert [n.live.kind for n in result.unmanaged_new] == ["watchdog"]


def test_a_balloon_of_model_none_is_no_device_and_the_emulator_is_skipped():
    _, live = parse(domain("<memballoon model='none'/>"))
    assert live == []


def test_an_alias_of_ours_naming_no_device_of_this_vm_is_new_and_says_so():
    result = correlate([], parse(domain("<interface type='bridge'><mac address='52:54:00:00:00:01'/>"
                                        "<alias name='ua-elsewhere'/></interface>"))[1])
    assert [n.reason for n in result.unmanaged_new] == [
        "alias ua-elsewhere names no device of this VM"]


def test_libvirts_own_devices_are_recognised_again_by_alias_then_address():
    rows = [Row("u", "controller", managed=False, alias="usb", address={"type": "pci",
                                                                       "slot": "0x01"}),
            Row("p", "controller", managed=False, alias="", address={"type": "pci",
                                                                    "slot": "0x05"})]
    live = parse(domain("<controller type='usb' index='0'><alias name='usb'/>"
                        "<address type='pci' slot='0x07'/></controller>",
                        "<controller type='pci' index='1'><alias name='pci.1'/>"
                        "<address type='pci' slot='0x05'/></controller>"))[1]
    result = correlate(rows, live)
    assert {m.device.id: m.reason for m in result.matched} == {
        "u": "unmanaged, same libvirt alias", "p": "unmanaged, same address"}


def test_an_unplugged_device_that_is_back_matches_and_nothing_is_unplugged_twice():
    rows = [Row("n", "interface", "nic1", plugged=False), Row("d", "disk", "data", plugged=False)]
    live = parse(domain("<interface type='bridge'><alias name='ua-n'/></interface>"))[1]
    result = correlate(rows, live)
    assert [m.device.id for m in result.matched] == ["n"]
    assert result.unplugged == []  # the disk was already marked


def test_parse_rejects_what_is_not_a_libvirt_domain():
    with pytest.raises(InvalidSpec, match="live: is not well-formed XML"):
        parse("<domain>")
    with pytest.raises(InvalidSpec, match="live: is a <network> document"):
        parse("<network/>")


def fields(devices) -> list[tuple]:
    return [(d.tag, d.kind, dict(d.attrs), d.alias, dict(d.address), d.guest_name, d.mac,
             d.model) for d in devices]


@pytest.mark.parametrize("name", ["started", "hotplugged", "rich"])
def test_the_monitors_fast_path_reads_what_the_strict_parse_reads(name):
    xml = (LIVE / f"{name}.xml").read_text()
    BLOCKS.clear()
    assert fields(parse_devices(xml)) == fields(parse(xml)[1])
    assert fields(parse_devices(xml)) == fields(parse(xml)[1])  # now from the cache


def test_after_a_hotplug_only_the_new_device_is_parsed_and_it_is_read_right():
    BLOCKS.clear()
    parse_devices((LIVE / "started.xml").read_text())
    parsed = []
    original = ET.fromstring
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(live.ET, "fromstring", lambda text: parsed.append(text) or original(text))
        xml = (LIVE / "hotplugged.xml").read_text()
        devices = parse_devices(xml)
    assert fields(devices) == fields(parse(xml)[1])
    [text] = parsed
    assert [element.tag for element in original(text)] == ["interface"]


def test_xml_not_laid_out_as_libvirt_writes_it_is_read_by_the_strict_parse():
    root = ET.fromstring((LIVE / "rich.xml").read_text())
    for element in root.iter():  # one line, no indentation
        element.tail = None
    xml = ET.tostring(root, encoding="unicode")
    assert BLOCKS.read(xml[xml.rfind("<devices>") + 9:xml.rfind("</devices>")]) is None
    assert fields(parse_devices(xml)) == fields(parse((LIVE / "rich.xml").read_text())[1])


def test_a_cut_that_does_not_fall_between_devices_is_never_cached():
    # An element inside a device indented like a device: the cut falls inside it.
    xml = (LIVE / "started.xml").read_text().replace("\n      <alias name='ua-", "\n    <alias name='ua-", 1)
    BLOCKS.clear()
    assert fields(parse_devices(xml)) == fields(parse(xml)[1])
    assert len(BLOCKS._parsed) == 0


def test_a_full_cache_is_emptied_and_reads_stay_right():
    blocks = live.DeviceBlocks(capacity=40)  # each of these documents has fewer devices
    for name in ["rich", "started", "hotplugged", "rich", "started"]:
        xml = (LIVE / f"{name}.xml").read_text()
        section = xml[xml.rfind("<devices>") + len("<devices>"):xml.rfind("</devices>")]
        assert fields(blocks.read(section)) == fields(parse(xml)[1])
        assert 0 < len(blocks._parsed) <= 40



def test_the_fast_path_finds_the_domains_devices_past_metadata_that_names_devices():
    xml = (LIVE / "started.xml").read_text().replace(
        "</metadata>", "<x:devices xmlns:x='urn:x'><devices><disk/></devices></x:devices>"
                       "</metadata>")
    assert fields(parse_devices(xml)) == fields(parse(xml)[1])
    assert all(d.kind != "disk" or d.alias for d in parse_devices(xml))


def test_the_fast_path_leaves_a_broken_document_to_the_strict_parse():
    with pytest.raises(InvalidSpec, match="live: is not well-formed XML"):
        parse_devices("<domain><devices><disk></devices></domain>")
    assert parse_devices("<domain><uuid>u</uuid></domain>") == []


def test_rows_without_an_instance_dict_are_read_through_their_attributes():
    class SlottedRow:
        __slots__ = ("id", "type", "managed", "plugged", "alias", "address", "spec")

        def __init__(self, **values):
            for key, value in values.items():
                setattr(self, key, value)

    xml, rows = golden("rich")
    slotted = [SlottedRow(**{k: getattr(r, k) for k in SlottedRow.__slots__}) for r in rows]
    result = correlate(slotted, parse_devices(xml))
    assert result.unmanaged_new == [] and result.unplugged == []
    assert len(result.matched) == len(rows)


# -- the CLI ------------------------------------------------------------------------------

SPEC = {"name": "cli-vm", "memory": "256MiB", "machine": "pc",
        "nics": [{"name": "nic1", "network": "br0"}, {"name": "nic2", "network": "br0"}]}


def test_kestrel_devices_match_prints_the_correlation_with_reasons(tmp_path, capsys):
    spec_file = tmp_path / "vm.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    live = render_spec(SPEC)
    root = ET.fromstring(live)
    nics = root.find("devices").findall("interface")
    root.find("devices").remove(nics[1])  # nic2 unplugged
    ET.SubElement(root.find("devices"), "controller", {"type": "usb", "index": "0"})
    live_file = tmp_path / "live.xml"
    live_file.write_text(ET.tostring(root, encoding="unicode"))

    assert cli.main(["devices", "match", "--spec", str(spec_file), "--live", str(live_file)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vm"] == "cli-vm"
    assert {(m["type"], m["name"], m["reason"]) for m in out["matched"]} >= {
        ("interface", "nic1", "ua- alias"), ("serial", None, "ua- alias")}
    assert [(u["name"], u["action"], u["reason"]) for u in out["unplugged"]] == [
        ("nic2", "unplugged", "not in the live XML: unplugged from the running VM")]
    assert [(n["type"], n["spec"]["type"], n["reason"]) for n in out["unmanaged_new"]] == [
        ("controller", "usb", "added by libvirt")]


def test_kestrel_devices_match_names_the_bad_input(tmp_path, capsys):
    spec_file = tmp_path / "vm.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    assert cli.main(["devices", "match", "--spec", str(spec_file),
                     "--live", str(tmp_path / "missing.xml")]) == 2
    assert "live: cannot read" in capsys.readouterr().err


# -- the agent's devices hash -------------------------------------------------------------

def test_the_devices_hash_follows_devices_not_their_state():
    xml = (LIVE / "rich.xml").read_text()
    same = devices_hash(xml)
    assert "/dev/pts/" in xml and "<target dev='sdb' bus='sata'" in xml
    # State that moves while devices stay: a CD's source, a tray, the console's pty.
    assert devices_hash(xml.replace("/dev/pts/", "/dev/pts/9")) == same
    assert devices_hash(xml.replace("<target dev='sdb' bus='sata'",
                                    "<target dev='sdb' bus='sata' tray='open'")) == same
    plugged = (LIVE / "hotplugged.xml").read_text()
    assert devices_hash(plugged) != devices_hash((LIVE / "started.xml").read_text())


class FakeDomain:
    def __init__(self, xml: str):
        self.xml, self.reads = xml, 0

    def UUIDString(self):  # noqa: N802 - libvirt's name
        return "vm-1"

    def XMLDesc(self, flags):  # noqa: N802
        self.reads += 1
        return self.xml


def test_the_devices_hash_is_cached_until_libvirt_says_devices_changed():
    hashes, dom = DevicesHashes(), FakeDomain((LIVE / "started.xml").read_text())
    first = hashes.get(dom)
    assert hashes.get(dom) == first and dom.reads == 1  # a stats poll costs no XML
    dom.xml = (LIVE / "hotplugged.xml").read_text()
    hashes.invalidate("vm-1")  # what the device-added event does
    assert hashes.get(dom) != first and dom.reads == 2


# -- what the engine renders next ---------------------------------------------------------

def test_devices_libvirt_added_and_unplugged_ones_are_not_rendered(engine, cluster):
    from engine_lib.model import Vm, VmDevice
    from engine_lib.services.common import get_vm

    engine.vms.ensure({"name": "vm1", "cluster": cluster, "memory": 256, "disks": [
        {"name": "a", "size": "1GiB", "storage_domain": "data", "interface": "scsi"},
        {"name": "b", "size": "1GiB", "storage_domain": "data"}]})
    with engine.store.transaction() as session:
        vm: Vm = get_vm(session, "vm1")
        ours = {d.type: d for d in vm.devices_of("controller")}
        vm.devices.insert(0, VmDevice(id="libvirts-usb", type="controller", managed=False,
                                      plugged=True, position=0, alias="usb",
                                      spec={"type": "usb", "model": "piix3-uhci"}, address={}))
        next(d for d in vm.devices_of("disk") if d.name == "b").plugged = False
        our_controller = ours["controller"].user_alias
    xml = engine.vms.domain_xml("vm1")
    root = ET.fromstring(xml)
    assert [c.find("alias").get("name") for c in root.iter("controller")] == [our_controller]
    assert [d.find("target").get("dev") for d in root.iter("disk")] == ["sda"]
    # The rows stay: the unplugged disk still holds the user's data.
    assert {d["name"] for d in engine.vms.info("vm1")[0]["disks"]} == {"a", "b"}
