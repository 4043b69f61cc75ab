"""Files under a root whose contents this host does not control (storage domains).

Other hosts, and an NFS server, write into a storage domain; a symlink planted
there must never lead this root-run agent, or the qemu-img it starts, outside
the domain. So a path is always a root plus a relative path, and the relative
part is walked one component at a time with ``openat(O_NOFOLLOW)``: a symlink,
'..' or a non-directory anywhere in it is refused. The root itself is the
administrator's (agent config) and may be reached through links.

- ``open_file`` / ``parent`` give file descriptors: the agent's own I/O, and
  qemu-img given ``fd_path(fd)``, act on exactly the file that was checked.
- ``confine`` gives a checked path string, for libvirt, which opens files
  itself (a file swapped for a link between the check and libvirt's open is
  the one window left; it needs concurrent write access to the domain).

Errors are InvalidSpec naming the caller's field.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

from engine_lib.protocol.errors import InvalidSpec

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def parts(field: str, relpath: str) -> list[str]:
    """The components of ``relpath``: relative, no '.', '..', empty segment or NUL."""
    if not isinstance(relpath, str) or not relpath or relpath.startswith("/") \
            or "\x00" in relpath:
        raise InvalidSpec(field, f"{relpath!r} is not a relative path")
    segments = relpath.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise InvalidSpec(field, f"{relpath!r} must name a path inside its root without "
                                 "'.', '..' or empty segments")
    return segments


def open_root(root: str, field: str) -> int:
    """An O_PATH descriptor of the root directory (links in the root itself are followed);
    FileNotFoundError when it is missing (an unmounted domain has nothing to follow)."""
    try:
        return os.open(root, _DIR_FLAGS)
    except NotADirectoryError:
        raise InvalidSpec(field, f"{root} is not a directory") from None


@contextlib.contextmanager
def parent(root: str, relpath: str, field: str, *,
           create: bool = False) -> Iterator[tuple[int, str]]:
    """(descriptor of the directory holding ``relpath``'s last component, that name).

    Missing directories on the way are made (0755) when ``create``; otherwise
    FileNotFoundError. The descriptor is closed on leaving the block.
    """
    segments = parts(field, relpath)
    fd = open_root(root, field)
    try:
        for index, segment in enumerate(segments[:-1]):
            child = _step(fd, segment, create, field, os.path.join(root, *segments[:index + 1]))
            os.close(fd)
            fd = child
        yield fd, segments[-1]
    finally:
        os.close(fd)


def _step(fd: int, name: str, create: bool, field: str, shown: str) -> int:
    """Open directory ``name`` under ``fd`` without following a link."""
    try:
        try:
            return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # made meanwhile: open it
                os.mkdir(name, 0o755, dir_fd=fd)
            return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except FileNotFoundError:
        raise
    except OSError:  # ENOTDIR or ELOOP: a link or a file where a directory should be
        raise InvalidSpec(field, f"{shown} is {_kind(fd, name)}, not a directory; "
                                 "nothing under a storage root is reached through links"
                          ) from None


def _kind(fd: int, name: str) -> str:
    try:
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except OSError:
        return "unreadable"
    return "a symlink" if stat.S_ISLNK(mode) else "not a regular directory"


def lstat(dirfd: int, name: str) -> os.stat_result | None:
    """The entry ``name`` itself (a link is not followed), or None when absent."""
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def check_regular(st: os.stat_result | None, field: str, shown: str) -> None:
    """Refuse an existing entry that is not a regular file (a link, a device, a FIFO...)."""
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise InvalidSpec(field, f"{shown} is {what}; only regular files are used on "
                                 "storage")


def open_file(root: str, relpath: str, field: str, flags: int = os.O_RDONLY,
              mode: int = 0o644, create_dirs: bool = False) -> int:
    """A descriptor of the regular file ``root/relpath``, reached without links.

    ``flags`` are os.open's (O_CREAT | O_EXCL to make a new file); O_NOFOLLOW,
    O_NONBLOCK (a FIFO must not hang the agent) and O_CLOEXEC are added.
    FileNotFoundError when it (or a directory on the way) is missing.
    """
    shown = os.path.join(root, relpath)
    with parent(root, relpath, field, create=create_dirs) as (dirfd, name):
        check_regular(lstat(dirfd, name), field, shown)
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode,
                         dir_fd=dirfd)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | FileExistsError):
                raise
            raise InvalidSpec(field, f"cannot open {shown}: {exc.strerror}") from None
    try:
        check_regular(os.fstat(fd), field, shown)
    except InvalidSpec:
        os.close(fd)
        raise
    return fd


def confine(root: str, relpath: str, field: str, *, must_exist: bool = False) -> str:
    """``root/relpath`` after checking that no directory on the way is a link and that
    the file, if present, is a regular file; FileNotFoundError if absent and
    ``must_exist``."""
    shown = os.path.join(root, relpath)
    try:
        with parent(root, relpath, field) as (dirfd, name):
            st = lstat(dirfd, name)
    except FileNotFoundError:
        st = None  # a directory on the way is missing: nothing there to follow
    check_regular(st, field, shown)
    if st is None and must_exist:
        raise FileNotFoundError(shown)
    return shown


def fd_path(fd: int) -> str:
    """How a child given ``fd`` (``pass_fds``) names that very file: a tool opening
    this path reopens the checked file, whatever happened to its name since."""
    return f"/proc/self/fd/{fd}"


def block_device(path: str, field: str) -> str:
    """A LUN's device path: it must resolve to a block device under /dev (never /dev/mem)."""
    real = os.path.realpath(path)
    if os.path.commonpath(["/dev", real]) != "/dev":
        raise InvalidSpec(field, f"{path} resolves to {real}, outside /dev")
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise InvalidSpec(field, f"{path} cannot be used: {exc.strerror}") from None
    if not stat.S_ISBLK(mode):
        raise InvalidSpec(field, f"{path} ({real}) is not a block device")
    return path
