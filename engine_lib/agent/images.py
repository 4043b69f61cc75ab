"""Images into and out of storage domains, and volume copies, as agent jobs.

Every file is reached through engine_lib.agent.paths (no link followed) and
every step works on descriptors of the image directory and the files checked
there. A new volume is written under a temporary name (a 0600 staging file for
the uploader's bytes) and hard-linked into place only when complete, so the
volume's name never shows half an image and a volume made meanwhile is never
clobbered; anything a failed or aborted job made is removed by its cleanups
(agent.jobs), the image directory too when it made it and it is empty.

The wire format (engine side: broker.AgentClient) is in the route table
(agent.api); results: upload/import ``{size_mib, format, detected_format,
sha256, actual_size}``, export ``{length, sha256, format}``, copy ``{size_mib,
format, actual_size}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import select
import subprocess
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO

from engine_lib.agent import image_check, paths, url_fetch
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.jobs import Job, Jobs
from engine_lib.agent.volumes import VolumeLocation
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError

PIECE = 1024 * 1024
BUFFERS = 4  # pieces of an upload in flight between reading and writing
MIB = 1024 * 1024
_HEX = re.compile(r"[0-9a-f]{64}")
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
DEFAULT_URL_TIMEOUT = 30.0
MAX_URL_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Target:
    location: VolumeLocation
    format: str
    size_mib: int  # 0: the image's own size

    @property
    def key(self) -> str:
        return f"{self.location.domain}/{self.location.relpath}"


@dataclass
class Download:
    """An export's staging file for the HTTP layer to stream (it closes ``fd``)."""
    fd: int
    length: int


class Images:
    def __init__(self, config: AgentConfig, jobs: Jobs):
        self.config = config
        self.jobs = jobs

    @property
    def _domains(self) -> dict[str, str]:
        return self.config.storage_domains

    # -- upload ----------------------------------------------------------------------

    def start_upload(self, body: dict) -> dict:
        target = _target(body.get("volume"), "volume", self._domains)
        declared = _image_format(body.get("image_format", ""))
        content_type = _content_type(body.get("content_type", "data"), target)
        length = body.get("length")
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise InvalidSpec("length", f"the image's size in bytes (a positive integer) is "
                                        f"required, got {length!r}")
        job = self._new(target, "upload")
        try:
            image_check.ensure_space(job.data["dirfd"], length, "length",
                                     f"the image ({length} bytes)")
            self._staging(job, "upload")
        except BaseException as exc:
            self.jobs.finish(job, exc)
            raise
        job.data.update(length=length, declared=declared, content_type=content_type)
        job.phase = "receiving"
        job.total_bytes = length
        return {"job": job.id}

    def receive(self, job_id: str, stream: BinaryIO, length: int) -> dict:
        """Write the PUT body into the staging file, 1 MiB at a time, hashing it."""
        job = self.jobs.take(job_id, "upload")
        try:
            if job.phase != "receiving":
                raise Conflict(f"job {job_id} has its bytes already ({job.phase})",
                               job=job_id)
            if length != job.data["length"]:
                raise InvalidSpec("Content-Length", f"{length} is not the length announced "
                                                    f"({job.data['length']})")
        except KestrelError:
            self.jobs.release(job)
            raise
        try:
            digest = _copy_in(job, stream, job.data["staging_fd"], length)
        except BaseException as exc:
            self.jobs.finish(job, exc)
            raise KestrelError(f"upload job {job_id} failed: "
                               f"{getattr(exc, 'message', None) or exc}") from None
        job.data["sha256"] = digest
        job.phase = "received"
        self.jobs.release(job)
        return {"received": length, "sha256": digest}

    def commit(self, job_id: str, body: dict) -> dict:
        job = self.jobs.take(job_id, "upload")
        if job.phase != "received":
            self.jobs.release(job)
            raise Conflict(f"job {job_id} has not received its bytes ({job.phase})",
                           job=job_id)
        given = body.get("sha256")
        if not isinstance(given, str) or not _HEX.fullmatch(given.lower()):
            self.jobs.release(job)
            raise InvalidSpec("sha256", f"the hex sha256 of the bytes sent is required, "
                                        f"got {given!r}")
        if given.lower() != job.data["sha256"]:
            error = InvalidSpec("sha256", f"the agent received bytes with sha256 "
                                          f"{job.data['sha256']}, not {given.lower()}")
            self.jobs.finish(job, error)
            raise error
        self.jobs.run(job, self._place)
        return {"job": job.id}

    # -- import from a URL -------------------------------------------------------------

    def start_import(self, body: dict) -> dict:
        target = _target(body.get("volume"), "volume", self._domains)
        declared = _image_format(body.get("image_format", ""))
        content_type = _content_type(body.get("content_type", "data"), target)
        url = body.get("url")
        url_fetch.check_url(url)  # type: ignore[arg-type]
        expected = body.get("sha256", "")
        if not isinstance(expected, str) or (expected and not _HEX.fullmatch(expected.lower())):
            raise InvalidSpec("sha256", f"'' or a hex sha256 is required, got {expected!r}")
        timeout = body.get("timeout_s", DEFAULT_URL_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout <= MAX_URL_TIMEOUT:
            raise InvalidSpec("timeout_s", f"a number of seconds above 0 and up to "
                                           f"{MAX_URL_TIMEOUT:g} is required, got {timeout!r}")
        job = self._new(target, "import")
        try:
            self._staging(job, "import")
        except BaseException as exc:
            self.jobs.finish(job, exc)
            raise
        job.data.update(declared=declared, content_type=content_type, url=url,
                        expected=expected.lower(), timeout=float(timeout))
        job.phase = "downloading"
        self.jobs.run(job, self._download_and_place)
        return {"job": job.id}

    def _download_and_place(self, job: Job) -> dict:
        fd, digest = job.data["staging_fd"], hashlib.sha256()
        free = image_check.free_bytes(job.data["dirfd"]) - image_check.MARGIN_BYTES
        received = 0

        def write(piece: bytes, total: int | None) -> None:
            nonlocal received
            job.check()
            if total is not None and total > free:
                raise InvalidSpec("url", f"the image is {total} bytes; the storage domain "
                                         f"has {max(free, 0)} bytes free")
            received += len(piece)
            if received > free:
                raise InvalidSpec("url", f"the image is larger than the storage domain's "
                                         f"free space ({max(free, 0)} bytes)")
            _write_all(fd, piece)
            digest.update(piece)
            job.report(received, total)

        url_fetch.fetch(job.data["url"], write, job.data["timeout"],
                        self.config.allow_private_urls)
        job.data["sha256"] = digest.hexdigest()
        if job.data["expected"] and job.data["expected"] != job.data["sha256"]:
            raise InvalidSpec("sha256", f"the download has sha256 {job.data['sha256']}, "
                                        f"not {job.data['expected']}")
        return self._place(job)

    # -- checking and placing (upload, import) ------------------------------------------

    def _place(self, job: Job) -> dict:
        """Check the staging file, then link it (same format) or convert it into place,
        grow it, and drop the staging name."""
        target: Target = job.data["target"]
        dirfd, staging_fd = job.data["dirfd"], job.data["staging_fd"]
        job.phase = "checking"
        info = image_check.inspect(staging_fd, job.data["declared"], job.data["content_type"])
        detected = info["detected_format"]
        job.check()
        if detected == target.format:
            os.fchmod(staging_fd, 0o644)
            final_fd = staging_fd
            self._link(job, job.data["staging"])
        else:
            job.phase = "converting"
            source = image_check.pinned(detected, staging_fd)
            needed = image_check.measure(source, (staging_fd,), target.format)
            image_check.ensure_space(dirfd, needed, "image", f"converting to {target.format}")
            final_fd = self._temp(job, "converting", 0o644)
            _convert(job, source, (staging_fd,), target.format, final_fd)
            self._link(job, job.data["converting"])
        size = self._grow(job, final_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job.data["staging"], dir_fd=dirfd)
        _durable(final_fd, dirfd)
        return {"size_mib": size // MIB, "format": target.format, "detected_format": detected,
                "sha256": job.data["sha256"], "actual_size": os.fstat(final_fd).st_blocks * 512}

    # -- export --------------------------------------------------------------------------

    def start_export(self, body: dict) -> dict:
        source = _source(body.get("volume"), "volume", self._domains)
        fmt = body.get("format", source.format)
        if fmt not in image_check.TARGET_FORMATS:
            raise InvalidSpec("format", f"'{fmt}' is not one of "
                                        f"{', '.join(image_check.TARGET_FORMATS)}")
        chain = _chain(body.get("chain", []), source.location.domain)
        job = self.jobs.create("export")
        try:
            name = self._open_dir(job, source.location)
            job.data["target"] = Target(source.location, fmt, 0)
            fds = _open_chain(job, source, chain, self._domains)
            self._staging(job, "export", name)
        except BaseException as exc:
            self.jobs.finish(job, exc)
            raise
        job.phase = "converting"
        self.jobs.run(job, lambda j: self._export(j, source, chain, fds))
        return {"job": job.id}

    def _export(self, job: Job, source: Target, chain: list[Target], fds: list[int]) -> dict:
        fmt = job.data["target"].format
        name = _chain_spec(source, chain, fds)
        needed = image_check.measure(name, tuple(fds), fmt)
        image_check.ensure_space(job.data["dirfd"], needed, "volume",
                                 f"exporting as {fmt}")
        out = job.data["staging_fd"]
        _convert(job, name, tuple(fds), fmt, out)
        job.phase = "hashing"
        length = os.fstat(out).st_size
        digest = hashlib.sha256()
        done = 0
        job.report(0, length)
        while piece := os.pread(out, PIECE, done):
            job.check()
            digest.update(piece)
            done += len(piece)
            job.report(done)
        # The directory stays open for GET and for removing the file when forgotten.
        keep, staging = os.dup(job.data["dirfd"]), job.data["staging"]
        job.data["export_dirfd"] = keep
        job.on_forget = lambda: _forget_export(keep, staging)
        return {"length": length, "sha256": digest.hexdigest(), "format": fmt}

    def export_file(self, job_id: str) -> Download:
        job = self.jobs.get(job_id)
        if job.kind != "export":
            raise Conflict(f"job {job_id} is a {job.kind} job, not an export", job=job_id)
        if job.status != "succeeded" or job.result is None:
            raise Conflict(f"export job {job_id} is {job.status}, not succeeded",
                           job=job_id, status=job.status)
        fd = os.open(job.data["staging"], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=job.data["export_dirfd"])
        return Download(fd, job.result["length"])

    # -- copy ----------------------------------------------------------------------------

    def copy(self, body: dict) -> dict:
        source = _source(body.get("source"), "source", self._domains)
        chain = _chain(body.get("chain", []), source.location.domain)
        target = _target(body.get("target"), "target", self._domains)
        if target.key == source.key:
            raise InvalidSpec("target", "the target is the source volume")
        job = self._new(target, "copy")
        try:
            fds = _open_chain(job, source, chain, self._domains)
        except BaseException as exc:
            self.jobs.finish(job, exc)
            raise
        job.phase = "converting"
        self.jobs.run(job, lambda j: self._copy(j, source, chain, fds))
        return {"job": job.id}

    def _copy(self, job: Job, source: Target, chain: list[Target], fds: list[int]) -> dict:
        target: Target = job.data["target"]
        name = _chain_spec(source, chain, fds)
        needed = image_check.measure(name, tuple(fds), target.format)
        image_check.ensure_space(job.data["dirfd"], needed, "target",
                                 f"copying as {target.format}")
        out = self._temp(job, "converting", 0o644)
        _convert(job, name, tuple(fds), target.format, out)
        self._link(job, job.data["converting"])
        size = self._grow(job, out)
        _durable(out, job.data["dirfd"])
        return {"size_mib": size // MIB, "format": target.format,
                "actual_size": os.fstat(out).st_blocks * 512}

    # -- the pieces ----------------------------------------------------------------------

    def _new(self, target: Target, kind: str) -> Job:
        """A job on a volume that must not exist yet, with its image directory open."""
        if target.location.exists(self._domains):
            raise Conflict(f"volume {target.location.path(self._domains)} exists already",
                           volume=target.key)
        job = self.jobs.create(kind, target.key)
        job.data["target"] = target
        try:
            self._open_dir(job, target.location, create=True)
        except BaseException as exc:
            self.jobs.finish(job, exc)
            raise
        return job

    def _open_dir(self, job: Job, location: VolumeLocation, create: bool = False) -> str:
        """Open the volume's image directory (made when ``create``; removed again by the
        cleanups if it is then empty); the volume's name in it."""
        root = location.root(self._domains)
        if not os.path.isdir(root):
            raise KestrelError(f"storage domain mount point {root} does not exist on this "
                               "host", path=root)
        try:
            with paths.parent(root, location.relpath, "volume", create=create) \
                    as (dirfd, name):
                job.data["dirfd"] = kept = os.dup(dirfd)
        except FileNotFoundError:
            raise InvalidSpec("volume", f"volume {location.path(self._domains)} does not "
                                        "exist") from None
        job.data["name"] = name
        job.closers.append(lambda: os.close(kept))
        if create:
            job.cleanups.append(lambda: _remove_empty_dir(root, location.image))
        return name

    def _staging(self, job: Job, kind: str, name: str = "") -> None:
        job.data["staging_fd"] = self._temp(job, kind, 0o600, name)
        job.data["staging"] = job.data[kind]

    def _temp(self, job: Job, kind: str, mode: int, name: str = "") -> int:
        """A new file ``<volume>.<kind>-<job>`` next to the volume; removed unless the job
        succeeds (an export's staging file stays until the job is forgotten)."""
        dirfd = job.data["dirfd"]
        temp = f"{name or job.data['name']}.{kind}-{job.id[:12]}"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dirfd)
        os.fchmod(fd, mode)  # whatever the umask
        job.data[kind] = temp
        job.cleanups.append(lambda: _unlink(dirfd, temp))
        job.closers.append(lambda: os.close(fd))
        return fd

    def _link(self, job: Job, temp: str) -> None:
        """Give the finished file its volume name; never over an existing volume."""
        dirfd, name = job.data["dirfd"], job.data["name"]
        job.check()
        try:
            os.link(temp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
        except FileExistsError:
            raise Conflict(f"volume {job.data['target'].key} was created meanwhile; "
                           "it is left as it is", volume=job.data["target"].key) from None
        # From here a failure (growing) must remove the volume this job made.
        stat = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        job.cleanups.append(lambda: _unlink_if(dirfd, name, stat))
        with contextlib.suppress(FileNotFoundError):
            if temp != job.data.get("staging"):
                os.unlink(temp, dir_fd=dirfd)

    def _grow(self, job: Job, fd: int) -> int:
        """Grow the new volume to the target's size_mib; its virtual size in bytes."""
        target: Target = job.data["target"]
        name = image_check.pinned(target.format, fd)
        size = _virtual_size(name, fd)
        if target.size_mib and size < target.size_mib * MIB:
            job.phase = "growing"
            result = subprocess.run(["qemu-img", "resize", "-q", name, f"{target.size_mib}M"],
                                    pass_fds=(fd,), capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0:
                raise KestrelError(f"qemu-img could not grow volume {target.key} to "
                                   f"{target.size_mib} MiB: {result.stderr.strip()}")
            size = target.size_mib * MIB
        return size


# -- request fields ---------------------------------------------------------------------

_TARGET_KEYS = {"domain", "image", "volume", "format", "size_mib"}


def _location(item: Any, field: str, domains: dict[str, str], keys: set[str]) -> str:
    if not isinstance(item, dict):
        raise InvalidSpec(field, "an object {domain, image, volume, format} is required")
    unknown = set(item) - keys
    if unknown:
        raise InvalidSpec(field, f"unknown keys {sorted(unknown)}")
    for key in ("domain", "image", "volume"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise InvalidSpec(f"{field}.{key}", "a non-empty string is required")
    fmt = item.get("format", "qcow2")
    if fmt not in image_check.TARGET_FORMATS:
        raise InvalidSpec(f"{field}.format", f"'{fmt}' is not one of "
                                             f"{', '.join(image_check.TARGET_FORMATS)}")
    location = VolumeLocation(item["domain"], item["image"], item["volume"])
    location.root(domains)  # InvalidSpec when the domain is not attached here
    location.relpath  # noqa: B018  (checks the names)
    return str(fmt)


def _target(item: Any, field: str, domains: dict[str, str]) -> Target:
    fmt = _location(item, field, domains, _TARGET_KEYS)
    size = item.get("size_mib", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidSpec(f"{field}.size_mib", f"a size in MiB (0: the image's own) is "
                                               f"required, got {size!r}")
    return Target(VolumeLocation(item["domain"], item["image"], item["volume"]), fmt, size)


def _source(item: Any, field: str, domains: dict[str, str]) -> Target:
    fmt = _location(item, field, domains, _TARGET_KEYS - {"size_mib"})
    return Target(VolumeLocation(item["domain"], item["image"], item["volume"]), fmt, 0)


def _chain(items: Any, domain: str) -> list[Target]:
    if not isinstance(items, list):
        raise InvalidSpec("chain", "a list of {image, volume, format} (the parents, nearest "
                                   "first) is required")
    chain = []
    for index, item in enumerate(items):
        field = f"chain[{index}]"
        if isinstance(item, dict) and "domain" not in item:
            item = {**item, "domain": domain}
        if isinstance(item, dict) and item.get("domain") != domain:
            raise InvalidSpec(f"{field}.domain", "a parent is on the volume's own domain")
        fmt = _location(item, field, {domain: ""}, _TARGET_KEYS - {"size_mib"})
        chain.append(Target(VolumeLocation(domain, item["image"], item["volume"]), fmt, 0))
    return chain


def _image_format(value: Any) -> str:
    if value != "" and value not in image_check.FORMATS:
        raise InvalidSpec("image_format", f"{value!r} is not '' (detect) or one of "
                                          f"{', '.join(image_check.FORMATS)}")
    return str(value)


def _content_type(value: Any, target: Target) -> str:
    if value not in ("data", "iso"):
        raise InvalidSpec("content_type", f"{value!r} is not 'data' or 'iso'")
    if value == "iso" and target.format != "raw":
        raise InvalidSpec("volume.format", "an ISO volume is raw")
    return str(value)


# -- files and processes ----------------------------------------------------------------

def _open_chain(job: Job, source: Target, chain: list[Target],
                domains: dict[str, str]) -> list[int]:
    """Read-only descriptors of the source and its parents (closed when the job ends)."""
    fds: list[int] = []
    job.closers.append(lambda: [os.close(fd) for fd in fds])
    for index, item in enumerate([source, *chain]):
        field = "source" if index == 0 else f"chain[{index - 1}]"
        try:
            fds.append(item.location.open(domains))
        except FileNotFoundError:
            raise InvalidSpec(field, f"volume {item.location.path(domains)} does not "
                                     "exist") from None
    return fds


def _chain_spec(source: Target, chain: list[Target], fds: list[int]) -> str:
    """The explicit json: chain (innermost parent has no backing): nothing is probed and no
    header's backing name is followed."""
    backing: dict | None = None
    for item, fd in reversed(list(zip([source, *chain], fds))):
        backing = image_check.spec(item.format, fd, backing)
    return "json:" + json.dumps(backing)


def _convert(job: Job, source: str, fds: tuple[int, ...], fmt: str, out: int) -> None:
    """qemu-img convert into the descriptor ``out``, progress into the job; killed on abort."""
    run_qemu_img(job, ["qemu-img", "convert", "-p", "-O", fmt, source, paths.fd_path(out)],
                 [*fds, out], "convert")


def run_qemu_img(job: Job, args: list[str], fds: list[int], what: str) -> None:
    """Run a qemu-img command given ``-p``, its progress into the job; killed on abort.
    KestrelError naming ``what`` and qemu-img's stderr when it fails."""
    proc = subprocess.Popen(args, pass_fds=tuple(fds), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if job.abort.is_set():
                proc.kill()
                job.check()
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            found = _PROGRESS.findall(chunk)
            if found:
                job.progress = float(found[-1])
        stderr = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise KestrelError(f"qemu-img {what} failed: {stderr.strip() or proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _virtual_size(name: str, fd: int) -> int:
    result = subprocess.run(["qemu-img", "info", "--output=json", name], pass_fds=(fd,),
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KestrelError(f"qemu-img cannot read the new volume: {result.stderr.strip()}")
    return int(json.loads(result.stdout)["virtual-size"])


def _copy_in(job: Job, stream: BinaryIO, fd: int, length: int) -> str:
    """Read ``length`` bytes into ``fd``, hashing them; a short body is an error.

    Reading (TLS) and hashing + writing overlap in two threads (both release the
    GIL), through BUFFERS pieces of 1 MiB: memory stays bounded whatever the size.
    """
    digest = hashlib.sha256()
    free: queue.Queue[memoryview] = queue.Queue()
    full: queue.Queue[tuple[memoryview, int] | None] = queue.Queue()
    for _ in range(BUFFERS):
        free.put(memoryview(bytearray(PIECE)))
    failed: list[BaseException] = []

    def drain() -> None:
        while (item := full.get()) is not None:
            view, size = item
            try:
                if not failed:
                    digest.update(view[:size])
                    _write_all(fd, view[:size])
            except BaseException as exc:  # reported by the reader
                failed.append(exc)
            free.put(view)

    writer = threading.Thread(target=drain, name=f"upload-{job.id[:8]}", daemon=True)
    writer.start()
    done = 0
    try:
        while done < length:
            job.check()
            if failed:
                raise failed[0]
            view = free.get()
            got = stream.readinto(view[:min(PIECE, length - done)])  # type: ignore[attr-defined]
            if not got:
                raise KestrelError(f"the upload ended after {done} of {length} bytes")
            full.put((view, got))
            done += got
            job.report(done)
    finally:
        full.put(None)
        writer.join()
    if failed:
        raise failed[0]
    return digest.hexdigest()


def _durable(fd: int, dirfd: int) -> None:
    """On stable storage before the job says so (the engine then records the volume ok):
    the file's data, and its name in the image directory."""
    os.fdatasync(fd)
    # ``dirfd`` is an O_PATH descriptor (paths.py), which fsync refuses: open the same
    # directory through it.
    directory = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink(dirfd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dirfd)


def _unlink_if(dirfd: int, name: str, made: os.stat_result) -> None:
    """Remove the volume this job made, not one that replaced it since."""
    with contextlib.suppress(FileNotFoundError):
        now = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
            os.unlink(name, dir_fd=dirfd)


def _remove_empty_dir(root: str, image: str) -> None:
    with contextlib.suppress(OSError):  # not empty (other volumes), gone
        with paths.parent(root, image, "volume") as (rootfd, name):
            os.rmdir(name, dir_fd=rootfd)


def _forget_export(dirfd: int, staging: str) -> None:
    try:
        _unlink(dirfd, staging)
    finally:
        os.close(dirfd)

