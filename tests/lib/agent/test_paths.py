"""engine_lib.agent.paths on real directories: links in the relative part are refused."""

from __future__ import annotations

import os

import pytest

from engine_lib.agent import paths
from engine_lib.protocol.errors import InvalidSpec


@pytest.fixture
def root(tmp_path):
    (tmp_path / "root" / "img").mkdir(parents=True)
    (tmp_path / "root" / "img" / "vol").write_bytes(b"inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "vol").write_bytes(b"sixteen bytes!!!")
    return tmp_path / "root"


@pytest.mark.parametrize("relpath", ["", "/etc/shadow", "img/../img/vol", "img//vol", "./img",
                                     "img/vol\x00"])
def test_relative_paths_that_could_leave_the_root_are_refused(root, relpath):
    with pytest.raises(InvalidSpec, match="^f:"):
        paths.confine(str(root), relpath, "f")


def test_a_regular_file_is_confined_and_opened(root):
    assert paths.confine(str(root), "img/vol", "f", must_exist=True) == f"{root}/img/vol"
    fd = paths.open_file(str(root), "img/vol", "f")
    try:
        assert os.read(fd, 100) == b"inside"
    finally:
        os.close(fd)


def test_a_linked_directory_or_file_is_refused_and_nothing_outside_changes(root):
    outside = root.parent / "outside"
    (root / "dirlink").symlink_to(outside)
    (root / "img" / "filelink").symlink_to(outside / "vol")
    (root / "img" / "dangling").symlink_to(outside / "new")
    for relpath, what in [("dirlink/vol", "dirlink is a symlink, not a directory"),
                          ("img/filelink", "filelink is a symlink"),
                          ("img/dangling", "dangling is a symlink")]:
        with pytest.raises(InvalidSpec, match=what):
            paths.confine(str(root), relpath, "f")
        with pytest.raises(InvalidSpec, match=what):
            paths.open_file(str(root), relpath, "f", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    with pytest.raises(InvalidSpec, match="dirlink is a symlink"):
        with paths.parent(str(root), "dirlink/sub/vol", "f", create=True):
            pass
    assert sorted(p.name for p in outside.iterdir()) == ["vol"]
    assert (outside / "vol").read_bytes() == b"sixteen bytes!!!"


def test_a_fifo_or_a_missing_file(root):
    os.mkfifo(root / "img" / "fifo")
    with pytest.raises(InvalidSpec, match="fifo is not a regular file"):
        paths.open_file(str(root), "img/fifo", "f")
    with pytest.raises(FileNotFoundError):
        paths.open_file(str(root), "nodir/vol", "f")
    assert paths.confine(str(root), "nodir/vol", "f") == f"{root}/nodir/vol"
    with pytest.raises(FileNotFoundError):
        paths.confine(str(root), "img/none", "f", must_exist=True)


def test_parent_makes_missing_directories_without_following_links(root):
    with paths.parent(str(root), "a/b/vol", "f", create=True) as (dirfd, name):
        assert name == "vol"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dirfd)
        os.close(fd)
    assert (root / "a" / "b" / "vol").is_file()
    with pytest.raises(FileNotFoundError):
        paths.open_root(str(root / "missing"), "f")
    assert paths.confine(str(root / "missing"), "img/vol", "f") == f"{root}/missing/img/vol"
