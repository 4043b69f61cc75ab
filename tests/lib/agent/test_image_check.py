"""Checks of untrusted image files, on images made with the real qemu-img."""

from __future__ import annotations

import os
import subprocess

import pytest

from engine_lib.agent import image_check
from engine_lib.protocol.errors import InvalidSpec


def _img(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True)


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(256 * 1024) + b"\0" * (768 * 1024))
    return path


def _inspect(path, declared: str = "", content_type: str = "data") -> dict:
    fd = os.open(path, os.O_RDONLY)
    try:
        return image_check.inspect(fd, declared, content_type)
    finally:
        os.close(fd)


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vdi", "vhdx"])
def test_each_allowed_format_is_detected_and_passes(raw, tmp_path, fmt):
    out = tmp_path / f"disk.{fmt}"
    _img("convert", "-f", "raw", "-O", fmt, str(raw), str(out))
    info = _inspect(out)
    assert info["detected_format"] == fmt
    assert _inspect(out, fmt)["detected_format"] == fmt  # declared right


def test_raw_is_raw(raw):
    assert _inspect(raw, "raw")["detected_format"] == "raw"
    assert _inspect(raw, "", "iso")["detected_format"] == "raw"


def test_a_qcow2_whose_backing_file_is_etc_shadow_is_refused_before_qemu_opens_it(tmp_path):
    path = tmp_path / "evil.qcow2"
    _img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(path), "1M")
    with pytest.raises(InvalidSpec) as err:
        _inspect(path)
    assert err.value.field == "image"
    assert "backing file" in err.value.reason and "/etc/shadow" in err.value.reason


def test_a_qcow2_with_an_external_data_file_is_refused(tmp_path):
    path = tmp_path / "data.qcow2"
    _img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'elsewhere.raw'}",
         str(path), "1M")
    with pytest.raises(InvalidSpec, match="external data file"):
        _inspect(path)


def test_a_vmdk_descriptor_naming_other_files_is_refused(raw, tmp_path):
    path = tmp_path / "desc.vmdk"
    _img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=twoGbMaxExtentFlat",
         str(raw), str(path))
    with pytest.raises(InvalidSpec, match="vmdk descriptor"):
        _inspect(path)


def test_a_sparse_vmdk_without_capacity_whose_descriptor_names_other_files_is_refused(
        raw, tmp_path):
    path = tmp_path / "disk.vmdk"
    _img("convert", "-f", "raw", "-O", "vmdk", str(raw), str(path))
    data = bytearray(path.read_bytes())
    data[12:20] = b"\0" * 8  # capacity 0: qemu would follow the embedded descriptor
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidSpec, match="other files"):
        _inspect(path)


@pytest.mark.parametrize("declared", ["raw", "vmdk"])
def test_a_declared_format_that_lies_is_refused_naming_image_format(raw, tmp_path, declared):
    path = tmp_path / "disk.qcow2"
    _img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    with pytest.raises(InvalidSpec) as err:
        _inspect(path, declared)
    assert err.value.field == "image_format"
    assert f"declared {declared} but is qcow2" in err.value.reason


def test_a_raw_file_declared_qcow2_is_refused(raw):
    with pytest.raises(InvalidSpec, match="declared qcow2 but is raw"):
        _inspect(raw, "qcow2")


def test_an_unknown_declared_format_is_refused(raw):
    with pytest.raises(InvalidSpec, match="'vpc' is not one of"):
        _inspect(raw, "vpc")


def test_a_qcow2_iso_is_refused(raw, tmp_path):
    path = tmp_path / "disk.qcow2"
    _img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    with pytest.raises(InvalidSpec) as err:
        _inspect(path, "", "iso")
    assert err.value.field == "content_type"


def test_a_truncated_qcow2_is_refused(raw, tmp_path):
    path = tmp_path / "cut.qcow2"
    _img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(InvalidSpec, match="truncated or corrupt"):
        _inspect(path)


def test_a_qcow2_with_a_garbage_header_is_refused(tmp_path):
    path = tmp_path / "garbage.qcow2"
    path.write_bytes(b"QFI\xfb" + b"\0\0\0\3" + b"\0" * 16 + os.urandom(4096))
    with pytest.raises(InvalidSpec) as err:
        _inspect(path)
    assert err.value.field == "image"


def test_qemu_img_runs_under_memory_and_cpu_limits():
    argv = image_check.limited(["qemu-img", "info"])
    assert argv[:4] == ["prlimit", "--as=1073741824", "--cpu=30", "--"]


def test_free_space_is_checked_with_a_margin(tmp_path, monkeypatch):
    real = os.statvfs(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        free = real.f_bavail * real.f_frsize
        image_check.ensure_space(fd, 1024, "length", "the image")
        with pytest.raises(InvalidSpec) as err:
            image_check.ensure_space(fd, free, "length", "the image")
    finally:
        os.close(fd)
    assert err.value.field == "length"
    assert "MiB free" in err.value.reason
