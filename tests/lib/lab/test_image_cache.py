"""The lab's image cache: built once per path even when asked for twice at once,
never a half-written file, a changed recipe a new name."""

from __future__ import annotations

import os
import threading
import time

import pytest

from kestrel_lab import debian_image, guest_disk, image_cache


def _someone_waits_on(path: str) -> bool:
    """True when /proc/locks shows a process blocked on a lock of ``path``'s inode."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as locks:
        return any("->" in line and line.split()[-3].endswith(f":{inode}") for line in locks)


def test_two_callers_at_once_build_once(tmp_path):
    target = str(tmp_path / "images" / "thing-1.qcow2")
    builds = []

    def build(work: str, output: str) -> None:
        builds.append(work)
        deadline = time.monotonic() + 10
        while not _someone_waits_on(f"{target}.lock"):  # the second caller is blocked on us
            assert time.monotonic() < deadline, "the second caller never waited for the lock"
            time.sleep(0.01)
        with open(output, "w") as out:
            out.write("image")

    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(image_cache.cached(target, build)))
    first.start()
    while not builds:
        time.sleep(0.01)
    second = image_cache.cached(target, build)
    first.join()
    assert results == [target] and second == target
    assert len(builds) == 1
    assert open(target).read() == "image"
    assert not os.path.exists(builds[0])  # scratch directory removed


def test_a_failed_build_leaves_no_file_behind(tmp_path):
    target = str(tmp_path / "thing.qcow2")

    def build(work: str, output: str) -> None:
        with open(output, "w") as out:
            out.write("half")
        raise RuntimeError("mmdebstrap died")

    with pytest.raises(RuntimeError):
        image_cache.cached(target, build)
    assert sorted(os.listdir(tmp_path)) == ["thing.qcow2.lock"]


def test_images_are_named_by_their_recipe(tmp_path, monkeypatch):
    state = str(tmp_path)
    debian = debian_image.image_path(state)
    tiny = guest_disk.image_path(state)
    assert os.path.dirname(debian) == os.path.dirname(tiny) == os.path.join(state, "images")
    assert os.path.basename(debian) == f"debian-12-{debian_image.recipe()}.qcow2"
    monkeypatch.setattr(debian_image, "PACKAGES", (*debian_image.PACKAGES, "vim-tiny"))
    assert debian_image.image_path(state) != debian
    monkeypatch.setattr(guest_disk, "KERNEL_CMDLINE", "console=ttyS0 quiet")
    assert guest_disk.image_path(state) != tiny
