"""The cloud-init NoCloud payload ISO: read from the metadata, written with genisoimage,
read back with isoinfo (the ISO 9660 view a guest's kernel mounts), removed with the VM."""

from __future__ import annotations

import os
import subprocess
import uuid
import xml.etree.ElementTree as ET

import pytest

from engine_lib.agent import domains, payload
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.vms import Hypervisor
from engine_lib.protocol import metadata, placeholders
from engine_lib.protocol.errors import InvalidSpec

P = metadata.PREFIX


def _domain(vm_id: str, files: list[tuple[str, str]] | None) -> str:
    seed = ""
    if files is not None:
        seed = (f"<{P}:payload alias='ua-cd' type='nocloud'>"
                + "".join(f"<{P}:file name='{name}'>{content}</{P}:file>"
                          for name, content in files)
                + f"</{P}:payload>")
    return (f"<domain type='test'><name>seed-{vm_id[:8]}</name><uuid>{vm_id}</uuid>"
            f"<metadata><{P}:vm xmlns:{P}='{metadata.NAMESPACE}'><{P}:cluster>c</{P}:cluster>"
            f"{seed}</{P}:vm></metadata>"
            "<memory unit='MiB'>64</memory><os><type>hvm</type></os><devices>"
            "<disk type='file' device='cdrom'>"
            f"<source file='{placeholders.payload(vm_id)}'/><target dev='hdc' bus='ide'/>"
            "<readonly/><alias name='ua-cd'/></disk></devices></domain>")


FILES = [("meta-data", '{"instance-id": "i-1", "local-hostname": "web1"}\n'),
         ("user-data", "#cloud-config\npackages: [nginx]\n"),
         ("network-config", "version: 2\n")]


def _iso_read(path: str, name: str) -> str:
    return subprocess.run(["isoinfo", "-R", "-i", path, "-x", f"/{name}"], check=True,
                          capture_output=True, text=True).stdout


def _iso_label(path: str) -> str:
    info = subprocess.run(["isoinfo", "-d", "-i", path], check=True, capture_output=True,
                          text=True).stdout
    return next(line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.startswith("Volume id:"))


def test_the_iso_is_labelled_cidata_and_holds_every_file_verbatim(tmp_path):
    seed = payload.read(ET.fromstring(_domain(str(uuid.uuid4()), FILES)))
    iso = payload.build(seed, str(tmp_path / "seed.iso"))
    assert _iso_label(iso) == "cidata"
    for name, content in FILES:
        assert _iso_read(iso, name) == content
    assert oct(os.stat(iso).st_mode & 0o777) == "0o600"  # it may hold a root password
    assert os.listdir(tmp_path) == ["seed.iso"]  # no work files left behind


def test_a_rebuild_replaces_the_old_content(tmp_path):
    path = str(tmp_path / "seed.iso")
    payload.build(payload.Payload("ua-cd", tuple(FILES)), path)
    changed = (FILES[0], ("user-data", "#cloud-config\nhostname: other\n"))
    payload.build(payload.Payload("ua-cd", changed), path)
    assert _iso_read(path, "user-data") == "#cloud-config\nhostname: other\n"
    assert "network-config" not in subprocess.run(
        ["isoinfo", "-R", "-f", "-i", path], check=True, capture_output=True, text=True).stdout


def test_no_payload_in_the_metadata_is_none():
    assert payload.read(ET.fromstring(_domain(str(uuid.uuid4()), None))) is None


@pytest.mark.parametrize("files, reason", [
    ([("meta-data", "{}"), ("user-data", ""), ("../etc/passwd", "x")], "not a NoCloud file"),
    ([("meta-data", "{}"), ("user-data", ""), ("user-data", "again")], "appears twice"),
    ([("user-data", "#cloud-config\n")], "lacks meta-data"),
])
def test_a_payload_cloud_init_would_ignore_is_refused(files, reason):
    with pytest.raises(InvalidSpec) as error:
        payload.read(ET.fromstring(_domain(str(uuid.uuid4()), files)))
    assert error.value.field == "payload.file" and reason in error.value.reason


def test_a_missing_tool_is_a_payload_error_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(payload.PayloadError, match="neither genisoimage nor xorriso"):
        payload.build(payload.Payload("ua-cd", tuple(FILES)), str(tmp_path / "seed.iso"))


def test_start_writes_the_iso_before_define_and_remove_deletes_it(tmp_path, monkeypatch):
    """And keeps the user-data private: the ISO is root's alone, and the metadata libvirt
    keeps (readable through its read-only socket) no longer holds the files."""
    # The test driver knows none of the undefine flags QEMU needs (NVRAM, snapshots).
    monkeypatch.setattr(domains, "UNDEFINE_FLAGS", 0)
    roots = {kind: str(tmp_path / kind) for kind in placeholders.KINDS if kind != "storage"}
    hv = Hypervisor(AgentConfig(name="t", address="127.0.0.1", port=0,
                                libvirt_uri="test:///default", ca="/ca", cert="/c", key="/k",
                                paths=roots, source="test"))
    vm_id = str(uuid.uuid4())
    iso = os.path.join(roots["payload"], f"{vm_id}.iso")
    try:
        hv.start(_domain(vm_id, FILES))
        live = ET.fromstring(hv.xml(vm_id)["xml"])
        assert live.find("devices/disk[@device='cdrom']/source").get("file") == iso
        assert _iso_read(iso, "user-data") == FILES[1][1]
        assert os.stat(iso).st_mode & 0o777 == 0o600
        assert "packages: [nginx]" not in hv.xml(vm_id)["xml"]
        assert live.find(f"metadata/{P}:vm/{P}:payload", {P: metadata.NAMESPACE}) is None
        hv.destroy(vm_id)
        hv.remove(vm_id)
        assert not os.path.exists(iso)
    finally:
        hv.close()
