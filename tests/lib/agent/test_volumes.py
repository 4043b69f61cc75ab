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
    refs = [VolumeRef("ua-1", "data", "img1", "vol1", "qcow2", 64),
            VolumeRef("ua-2", "data", "img2", "vol2", "raw", 16)]
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
    assert volumes.prepare([VolumeRef("ua", "data", "img1", "vol1", "qcow2", 64)], domains) == []
    assert existing.read_bytes() == b"guest data"


@pytest.mark.parametrize("ref, message", [
    (VolumeRef("ua", "data", "img", "vol", "vmdk", 1), "'vmdk' is not one of"),
    (VolumeRef("ua", "data", "img", "vol", "raw", 0), "0 is not a positive size"),
    (VolumeRef("ua", "other", "img", "vol", "raw", 1), "'other' is not attached"),
    (VolumeRef("ua", "data", "..", "vol", "raw", 1), "'..' is not a valid file name"),
    (VolumeRef("ua", "data", "img", "a/b", "raw", 1), "'a/b' is not a valid file name"),
])
def test_bad_refs_create_nothing(domains, tmp_path, ref, message):
    good = VolumeRef("ua", "data", "good", "vol", "raw", 1)
    with pytest.raises(InvalidSpec, match=message):
        volumes.prepare([good, ref], domains)
    assert list((tmp_path / "data").iterdir()) == []


def test_delete_removes_files_and_empty_image_dirs_and_is_idempotent(domains, tmp_path):
    volumes.prepare([VolumeRef("ua", "data", "img", "vol", "qcow2", 8)], domains)
    loc = VolumeLocation("data", "img", "vol")
    assert volumes.delete([loc], domains, in_use=set())[0]["deleted"] is True
    assert not (tmp_path / "data" / "img").exists()
    assert volumes.delete([loc], domains, in_use=set())[0]["deleted"] is False


def test_delete_refuses_a_volume_in_use_and_anything_outside_the_domain(domains, tmp_path):
    path = volumes.prepare([VolumeRef("ua", "data", "img", "vol", "qcow2", 8)], domains)[0]
    with pytest.raises(Conflict, match="is a disk of a VM defined on this host"):
        volumes.delete([VolumeLocation("data", "img", "vol")], domains, in_use={path})
    (tmp_path / "secret").write_text("x")
    (tmp_path / "data" / "img" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidSpec, match="link is a symlink"):
        volumes.delete([VolumeLocation("data", "img", "link")], domains, in_use=set())
    assert (tmp_path / "secret").exists()
