"""Volumes on storage domains, made with the real qemu-img."""

from __future__ import annotations

import json
import subprocess

import pytest

from engine_lib.agent import volumes
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.protocol.metadata import VolumeRef


@pytest.fixture
def domains(tmp_path):
    (tmp_path / "data").mkdir()
    return {"data": str(tmp_path / "data")}


def _info(path) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                         capture_output=True, check=True, text=True).stdout
    return json.loads(out)


def test_missing_volumes_are_created_thin_with_their_format_and_size(domains, tmp_path):
    refs = [VolumeRef("ua-1", "data", "img1", "vol1", "qcow2", 64, create=True),
            VolumeRef("ua-2", "data", "img2", "vol2", "raw", 16, create=True)]
    created = volumes.prepare(refs, domains)
    assert created == [f"{domains['data']}/img1/vol1", f"{domains['data']}/img2/vol2"]
    qcow = _info(created[0])
    assert (qcow["format"], qcow["virtual-size"]) == ("qcow2", 64 * 2**20)
    assert qcow["actual-size"] < 2**20  # thin
    raw = _info(created[1])
    assert (raw["format"], raw["virtual-size"]) == ("raw", 16 * 2**20)
    assert sorted(p.name for p in (tmp_path / "data" / "img1").iterdir()) == ["vol1"]


def test_existing_volume_is_never_touched(domains, tmp_path):
    existing = tmp_path / "data" / "img1" / "vol1"
    existing.parent.mkdir()
    existing.write_bytes(b"guest data")
    for create in (True, False):
        ref = VolumeRef("ua", "data", "img1", "vol1", "qcow2", 64, create=create)
        assert volumes.prepare([ref], domains) == []
    assert existing.read_bytes() == b"guest data"


def test_a_missing_volume_whose_disk_ran_before_fails_and_creates_nothing(domains, tmp_path):
    new = VolumeRef("ua-1", "data", "img1", "vol1", "qcow2", 8, disk="data", create=True)
    ran = VolumeRef("ua-2", "data", "img2", "vol2", "qcow2", 8, disk="root")
    with pytest.raises(Conflict, match=r"disk 'root': its volume \S+/img2/vol2 is missing on "
                                       r"storage domain 'data'") as info:
        volumes.prepare([new, ran], domains)
    assert info.value.details["disk"] == "root"
    assert list((tmp_path / "data").iterdir()) == []  # not even the new one


@pytest.mark.parametrize("ref, message", [
    (VolumeRef("ua", "data", "img", "vol", "vmdk", 1, create=True), "'vmdk' is not one of"),
    (VolumeRef("ua", "data", "img", "vol", "raw", 0, create=True), "0 is not a positive size"),
    (VolumeRef("ua", "other", "img", "vol", "raw", 1, create=True), "'other' is not attached"),
    (VolumeRef("ua", "data", "..", "vol", "raw", 1, create=True),
     "'..' is not a valid file name"),
    (VolumeRef("ua", "data", "img", "a/b", "raw", 1, create=True),
     "'a/b' is not a valid file name"),
])
def test_bad_refs_create_nothing(domains, tmp_path, ref, message):
    good = VolumeRef("ua", "data", "good", "vol", "raw", 1, create=True)
    with pytest.raises(InvalidSpec, match=message):
        volumes.prepare([good, ref], domains)
    assert list((tmp_path / "data").iterdir()) == []


def test_delete_removes_files_and_empty_image_dirs_and_is_idempotent(domains, tmp_path):
    volumes.prepare([VolumeRef("ua", "data", "img", "vol", "qcow2", 8, create=True)], domains)
    loc = VolumeLocation("data", "img", "vol")
    assert volumes.delete([loc], domains, in_use=set())[0]["deleted"] is True
    assert not (tmp_path / "data" / "img").exists()
    assert volumes.delete([loc], domains, in_use=set())[0]["deleted"] is False


def test_delete_refuses_a_volume_in_use_and_anything_outside_the_domain(domains, tmp_path):
    path = volumes.prepare([VolumeRef("ua", "data", "img", "vol", "qcow2", 8, create=True)], domains)[0]
    with pytest.raises(Conflict, match="is a disk of a VM defined on this host"):
        volumes.delete([VolumeLocation("data", "img", "vol")], domains, in_use={path})
    (tmp_path / "secret").write_text("x")
    (tmp_path / "data" / "img" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidSpec, match="link is a symlink"):
        volumes.delete([VolumeLocation("data", "img", "link")], domains, in_use=set())
    assert (tmp_path / "secret").exists()


@pytest.fixture
def outside(tmp_path):
    """A file outside the domain, 16 bytes, that no volume operation may touch."""
    (tmp_path / "outside").mkdir()
    target = tmp_path / "outside" / "vol"
    target.write_bytes(b"sixteen bytes!!!")
    return target


def _link_image_out(tmp_path, outside) -> None:
    (tmp_path / "data" / "img").symlink_to(outside.parent)


def _link_volume_out(tmp_path, outside, name="vol") -> None:
    (tmp_path / "data" / "img").mkdir(exist_ok=True)
    (tmp_path / "data" / "img" / name).symlink_to(outside)


@pytest.mark.parametrize("link", [_link_image_out, _link_volume_out])
def test_create_refuses_a_link_out_of_the_domain(domains, tmp_path, outside, link):
    link(tmp_path, outside)
    (tmp_path / "outside" / "vol").unlink()  # what a create would make: a new file there
    with pytest.raises(InvalidSpec, match="is a symlink"):
        volumes.prepare([VolumeRef("ua", "data", "img", "vol", "raw", 2)], domains)
    assert list((tmp_path / "outside").iterdir()) == []


@pytest.mark.parametrize("link", [_link_image_out, _link_volume_out])
def test_grow_refuses_a_link_out_of_the_domain(domains, tmp_path, outside, link):
    link(tmp_path, outside)
    with pytest.raises(InvalidSpec, match="is a symlink"):
        volumes.grow(VolumeLocation("data", "img", "vol"), domains, "raw", 2)
    assert outside.stat().st_size == 16


def test_grow_pins_the_format_and_never_opens_a_backing_file(domains, tmp_path):
    volumes.prepare([VolumeRef("ua", "data", "img", "vol", "qcow2", 8, create=True)], domains)
    path = tmp_path / "data" / "img" / "vol"
    # A header naming a backing file outside (here one that is not there: opening it fails).
    subprocess.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b",
                    str(tmp_path / "outside-backing"), str(path)], check=True)
    loc = VolumeLocation("data", "img", "vol")
    assert volumes.grow(loc, domains, "qcow2", 16)["resized"] is True
    assert volumes.virtual_size_mib(loc, domains, "qcow2") == 16
    # Declared raw, read as raw: a qcow2 header is data, never probed.
    assert volumes.virtual_size_mib(loc, domains, "raw") < 1


def test_grow_of_a_missing_volume_changes_nothing(domains, tmp_path):
    assert volumes.grow(VolumeLocation("data", "img", "vol"), domains, "raw", 2)["exists"] is False
    assert list((tmp_path / "data").iterdir()) == []


def test_delete_refuses_a_linked_image_directory(domains, tmp_path, outside):
    _link_image_out(tmp_path, outside)
    with pytest.raises(InvalidSpec, match="img is a symlink"):
        volumes.delete([VolumeLocation("data", "img", "vol")], domains, in_use=set())
    assert outside.read_bytes() == b"sixteen bytes!!!"
