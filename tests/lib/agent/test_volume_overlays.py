"""Thin volumes: a missing create='yes' volume with a parent becomes a qcow2 overlay
whose backing name is relative, made with the real qemu-img."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from engine_lib.agent import volumes
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.protocol.metadata import VolumeRef

MiB = 2**20


@pytest.fixture
def domain(tmp_path):
    root = tmp_path / "data"
    (root / "base-img").mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(root / "base-img" / "base"),
                    "96M"], check=True)
    return root


def _chain(path) -> list[dict]:
    out = subprocess.run(["qemu-img", "info", "--output=json", "--backing-chain", str(path)],
                         capture_output=True, check=True, text=True).stdout
    return json.loads(out)


def _thin(size_mib=64, parent="base-img/base", parent_format="raw", fmt="qcow2"):
    return VolumeRef("ua-1", "data", "thin-img", "thin", fmt, size_mib, disk="thin",
                     create=True, parent=parent, parent_format=parent_format)


def test_an_overlay_names_its_parent_relative_and_is_at_least_its_size(domain):
    base_before = (domain / "base-img" / "base").stat()
    [made] = volumes.prepare([_thin(64)], {"data": str(domain)})
    top, base = _chain(made)
    assert top["format"] == "qcow2" and top["backing-filename"] == "../base-img/base"
    assert top["backing-filename-format"] == "raw"
    assert top["virtual-size"] == 96 * MiB  # the parent's, larger than the disk's 64 MiB
    assert os.path.realpath(base["filename"]) == str(domain / "base-img" / "base")
    # The parent is read, never written.
    after = (domain / "base-img" / "base").stat()
    assert (after.st_mtime_ns, after.st_size) == (base_before.st_mtime_ns, base_before.st_size)
    # Every host's mount resolves it: the same overlay read from another mount point.
    moved = domain.parent / "elsewhere"
    domain.rename(moved)
    assert _chain(moved / "thin-img" / "thin")[1]["virtual-size"] == 96 * MiB


def test_an_overlay_larger_than_its_parent_takes_the_disks_size(domain):
    [made] = volumes.prepare([_thin(128)], {"data": str(domain)})
    assert _chain(made)[0]["virtual-size"] == 128 * MiB


def test_a_missing_parent_is_a_conflict_naming_the_disk_and_creates_nothing(domain):
    with pytest.raises(Conflict, match=r"disk 'thin': its backing volume \S+/base-img/gone "
                                       "is missing") as info:
        volumes.prepare([_thin(parent="base-img/gone")], {"data": str(domain)})
    assert info.value.details["disk"] == "thin"
    assert not (domain / "thin-img").exists()


def test_a_listed_backing_volume_must_exist(domain):
    backing = VolumeRef("", "data", "base-img", "gone", "raw", 96, disk="thin")
    with pytest.raises(Conflict, match="disk 'thin': its backing volume"):
        volumes.prepare([_thin(), backing], {"data": str(domain)})
    assert not (domain / "thin-img").exists()


@pytest.mark.parametrize("ref, field", [
    (_thin(parent="../etc"), "parent"),
    (_thin(parent="base-img/base/x"), "parent"),
    (_thin(parent="base-img"), "parent"),
    (_thin(parent_format="vmdk"), "parent_format"),
    (_thin(fmt="raw"), "format"),
])
def test_bad_parents_are_refused_naming_the_field(domain, ref, field):
    with pytest.raises(InvalidSpec) as info:
        volumes.prepare([ref], {"data": str(domain)})
    assert info.value.details["field"] == f"volume 'ua-1'.{field}"
    assert not (domain / "thin-img").exists()


def test_a_parent_that_is_a_link_is_refused_and_never_followed(domain, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * MiB)
    (domain / "base-img" / "base").unlink()
    (domain / "base-img" / "base").symlink_to(secret)
    with pytest.raises(InvalidSpec, match="symlink"):
        volumes.prepare([_thin()], {"data": str(domain)})
    (domain / "base-img" / "base").unlink()
    (domain / "linked-img").symlink_to(tmp_path)
    with pytest.raises(InvalidSpec, match="symlink"):
        volumes.prepare([_thin(parent="linked-img/secret")], {"data": str(domain)})
    assert not (domain / "thin-img").exists()


def test_an_existing_overlay_is_never_touched(domain):
    [made] = volumes.prepare([_thin()], {"data": str(domain)})
    before = os.stat(made)
    assert volumes.prepare([_thin()], {"data": str(domain)}) == []
    assert os.stat(made).st_mtime_ns == before.st_mtime_ns
