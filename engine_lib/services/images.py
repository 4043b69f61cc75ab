"""Disk images in and out of storage domains: uploads and downloads of volumes.

An upload comes from a file where the engine library runs (the module or the CLI
streams it straight to a host's agent), from a stream (the engine API's request
body: a ``BinaryIO`` and its length) or from a URL the host downloads. The
volume is registered ``locked`` before any byte moves, so a second upload to the
same disk is a Conflict naming it, and the engine loop can tell a volume whose
writer died (``reconcile``). Success makes it ``ok`` with the agent's
sha256, size and format; failure removes the row (the agent left no file), so a
failed upload leaves nothing registered.

A download exports the volume (flattening its chain) on a host, streams it to a
temporary file next to the destination, compares its sha256 with the agent's and
renames it into place: the file appears whole or not at all; or it writes the
bytes to a stream (the engine API's answer).

Both move their bytes a piece (1 MiB) at a time, report progress to the job they
run in (services.job_context) and stop between pieces when its user cancels: the
agent's job is aborted (it removes its staging file) and an upload's locked row is
removed.

A floating disk (oVirt's) is a volume with a ``name`` and no VM; an ISO is one
with ``content_type: iso`` that a VM's ``cdrom`` names.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm.attributes import flag_modified

from engine_lib.broker import AgentApi
from engine_lib.model import Cluster, DeviceType, Host, StorageDomain, Volume
from engine_lib.protocol.errors import (
    Conflict,
    InvalidSpec,
    KestrelError,
    NotFound,
)
from engine_lib.protocol.statuses import HostStatus
from engine_lib.services import job_context, listing, volume_jobs, volumes
from engine_lib.services.common import audit, get_vm, retry_on_conflict
from engine_lib.services.host_records import HostRef
from engine_lib.services.results import Outcome
from engine_lib.spec import choice
from engine_lib.units import size_mib as parse_size

MiB = 1 << 20
FORMATS = ("qcow2", "raw")
IMAGE_FORMATS = ("", "qcow2", "raw", "vmdk", "vdi", "vhdx")
CONTENT_TYPES = ("data", "iso")
# ok; locked while an upload, copy or export writes it; illegal when one failed half way.
VOLUME_STATUSES = ("ok", "locked", "illegal")
_CHECKSUM = re.compile(r"sha256:([0-9a-fA-F]{64})")
_HASH_PIECE = 1 << 20
# The agent's request fields, as the options of kestrel.virt.disk name them.
OPTION_OF_FIELD = {"image_format": "image_format", "length": "upload_image_path",
                   "url": "upload_image_url", "sha256": "image_checksum",
                   "volume.format": "format", "volume.size_mib": "size", "format": "format",
                   "timeout_s": "timeout", "content_type": "content_type",
                   "Content-Length": "Content-Length"}

Progress = Callable[[dict], None]


def volume_dict(volume: Volume) -> dict:
    return {"name": volume.name, "id": volume.id, "storage_domain": volume.storage_domain,
            "image_id": volume.image_id, "volume_id": volume.id, "format": volume.format,
            "size_mib": volume.size_mib, "content_type": volume.content_type,
            "status": volume.status, "sha256": volume.sha256, "readonly": volume.readonly,
            "description": volume.description}


def agent_volume(volume: Volume) -> dict:
    return {"domain": volume.storage_domain, "image": volume.image_id, "volume": volume.id,
            "format": volume.format, "size_mib": volume.size_mib}


def option_error(error: KestrelError, source: str = "upload_image_path") -> KestrelError:
    """The agent's error with its request field replaced by the module's option name."""
    if isinstance(error, InvalidSpec):
        field = str(getattr(error, "field", ""))
        return InvalidSpec(OPTION_OF_FIELD.get(field, source), str(error.reason))
    return error


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while piece := stream.read(_HASH_PIECE):
            digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True)
class DownloadPlan:
    name: str
    entity: dict  # the disk, with the format the bytes will have
    source: dict
    chain: list[dict]
    stored_format: str
    stored_sha256: str

    def unchanged(self, sha256: str) -> bool:
        """Whether bytes with this sha256 are what the download would write (known only
        for a volume without backing chain sent in its own format)."""
        return bool(self.stored_sha256) and not self.chain and sha256 == self.stored_sha256 \
            and self.entity["format"] == self.stored_format


@dataclass(frozen=True)
class Export:
    """A disk exported on a host (ImageService.exported), streamed once by write_to."""
    agent: AgentApi
    job: str
    entity: dict
    what: str

    def write_to(self, out: BinaryIO, progress: Progress | None = None) -> dict:
        """Stream the bytes into ``out``; {received, sha256}. Bytes that are not the
        agent's (sha256) are an error: a path's caller drops its temporary file."""
        got = self.agent.read_export(self.job, out, _bytes_progress(
            progress, "downloading", self.entity["length"], self.what))
        if got["sha256"] != self.entity["sha256"]:
            raise KestrelError(f"the download's sha256 {got['sha256']} is not the agent's "
                               f"{self.entity['sha256']}", disk=self.entity.get("name"))
        return got


class ImageService:
    def __init__(self, engine):
        self.engine = engine

    # -- upload ------------------------------------------------------------------------------

    def upload(self, name: str, *, storage_domain: str, upload_image_path: str | None = None,
               upload_image_url: str | None = None, upload_stream: BinaryIO | None = None,
               upload_length: int | None = None, image_format: str = "",
               image_checksum: str = "", content_type: str = "data", fmt: str | None = None,
               size: str | int | None = None, description: str = "", force: bool = False,
               timeout: float | None = None, floating: bool = True,
               progress: Progress | None = None, check_mode: bool = False) -> Outcome:
        """Upload a floating disk (``floating``) or a VM's disk volume (nameless row).

        The bytes come from ``upload_image_path`` (a file here), ``upload_stream`` (read
        exactly ``upload_length`` bytes; ``image_checksum`` required, as a stream cannot
        be read twice to compare it with an existing disk) or ``upload_image_url``.
        """
        source = _check_source(upload_image_path, upload_image_url, upload_stream,
                               upload_length)
        options = dict(storage_domain=storage_domain, image_format=image_format,
                       image_checksum=image_checksum, content_type=content_type, fmt=fmt,
                       size=size, description=description, force=force, timeout=timeout,
                       floating=floating, progress=progress, check_mode=check_mode)
        if upload_image_path:
            # The path form is the stream form over the opened file.
            with open(upload_image_path, "rb") as stream:
                return self._upload(name, source, stream, os.path.getsize(upload_image_path),
                                    **options)
        return self._upload(name, source, upload_stream, upload_length or 0, **options)

    def _upload(self, name: str, source: str, upload_stream: BinaryIO | None, length: int, *,
                storage_domain: str, image_format: str, image_checksum: str,
                content_type: str, fmt: str | None, size: str | int | None, description: str,
                force: bool, timeout: float | None, floating: bool,
                progress: Progress | None, check_mode: bool) -> Outcome:
        """An upload from ``upload_stream`` (``length`` bytes) or from the URL ``source``."""
        if image_format not in IMAGE_FORMATS:
            raise InvalidSpec("image_format", f"must be one of {', '.join(IMAGE_FORMATS[1:])}, "
                                              f"got {image_format!r}")
        if content_type not in CONTENT_TYPES:
            raise InvalidSpec("content_type", f"must be data or iso, got {content_type!r}")
        fmt = fmt or ("raw" if content_type == "iso" else "qcow2")
        if fmt not in FORMATS:
            raise InvalidSpec("format", f"must be qcow2 or raw, got {fmt!r}")
        if content_type == "iso" and fmt != "raw":
            raise InvalidSpec("format", "an ISO is stored raw")
        wanted_sha = ""
        if image_checksum:
            match = _CHECKSUM.fullmatch(image_checksum)
            if not match:
                raise InvalidSpec("image_checksum", "expected sha256:<64 hex digits>")
            wanted_sha = match.group(1).lower()
        mib = parse_size("size", size) if size is not None else 0
        existing = self._floating(name) if floating else None
        if upload_stream is not None and not wanted_sha and existing is not None:
            # Only to compare with what was uploaded before: a new disk is hashed on the
            # way (send_upload), never read twice.
            if not upload_stream.seekable():
                raise InvalidSpec("image_checksum", f"is required to compare the upload "
                                                    f"with the existing disk '{name}'")
            wanted_sha = _stream_sha256(upload_stream, length)
            upload_stream.seek(0)
        if existing is not None:
            if existing["status"] == "locked":
                raise Conflict(f"disk '{name}' is being uploaded (locked); wait for it",
                               disk=name)
            if not wanted_sha or existing["sha256"] == wanted_sha:
                return Outcome(False, existing)
            if not force:
                raise Conflict(f"disk '{name}' exists with other content (sha256 "
                               f"{existing['sha256'] or 'unknown'}); set force to replace it",
                               disk=name)
        if not storage_domain:
            raise InvalidSpec("storage_domain", "is required to upload a disk")
        host, free_mib = self._host_for(storage_domain)
        if length and free_mib is not None and free_mib * MiB < length:
            raise InvalidSpec("upload_image_path", f"the image is {length} bytes; storage "
                              f"domain '{storage_domain}' has {free_mib} MiB free on host "
                              f"'{host.name}'")
        if check_mode:
            return Outcome(True, {"name": name, "storage_domain": storage_domain, "format": fmt,
                                  "content_type": content_type, "status": "ok",
                                  "would_upload": source})
        job_context.check_cancelled(f"upload of disk '{name}'")
        volume_id = self._register(name if floating else "", storage_domain, fmt, mib,
                                   content_type, description,
                                   replacing=existing["id"] if existing else None)
        agent = self.engine.agent(host.address, host.port)
        started, sent = time.monotonic(), 0
        what = f"upload of disk '{name}'"
        try:
            request = {"domain": storage_domain, "image": volume_id[1], "volume": volume_id[0],
                       "format": fmt, "size_mib": mib}
            if upload_stream is not None:
                job = agent.start_upload(request, image_format=image_format, length=length,
                                         content_type=content_type)["job"]
                self._job_started(volume_id[0], job, host.name)
                sent_report = agent.send_upload(
                    job, upload_stream, length,
                    _bytes_progress(progress, "uploading", length, what))
                sent = sent_report["received"]
                if wanted_sha and sent_report["sha256"] != wanted_sha:
                    agent.forget_job(job)
                    raise InvalidSpec("image_checksum" if image_checksum else
                                      "upload_image_path",
                                      f"the file's sha256 is {sent_report['sha256']}, not "
                                      f"{wanted_sha} (was it changed while uploading?)")
                agent.commit_upload(job, sent_report["sha256"])
            else:
                job = agent.start_import(request, url=source, image_format=image_format,
                                         sha256=wanted_sha, content_type=content_type,
                                         timeout_s=timeout or 30.0)["job"]
                self._job_started(volume_id[0], job, host.name)
            result = volume_jobs.wait(agent, job, progress=_job_progress(progress),
                                      timeout=timeout, forget=False)
        except BaseException as exc:
            # The agent's job first: aborting it removes its staging file.
            _forget(agent, locals().get("job"))
            self._unregister(volume_id[0])
            if isinstance(exc, KestrelError):
                if isinstance(exc, Conflict) and "volume" in exc.details:
                    raise Conflict(f"disk '{name}' is being written by another job: "
                                   f"{exc.message}", disk=name) from None
                raise option_error(exc, "upload_image_path" if upload_stream
                                   else "upload_image_url") from None
            raise
        entity = self._registered(volume_id[0], result,
                                  replacing=existing["id"] if existing else None)
        _forget(agent, job)
        if existing is not None:
            self._delete_files(host, [{"domain": existing["storage_domain"],
                                       "image": existing["image_id"],
                                       "volume": existing["id"]}])
        entity.update(transferred_bytes=sent or int(result.get("actual_size") or 0),
                      upload_seconds=round(time.monotonic() - started, 3))
        return Outcome(True, entity)

    def _floating(self, name: str) -> dict | None:
        with self.engine.store.transaction(commit=False) as session:
            volume = _floating(session, name)
            return volume_dict(volume) if volume is not None else None

    def _host_for(self, domain_name: str) -> tuple[HostRef, int | None]:
        """An Up host of a cluster the domain is attached to that reports it available,
        the one with most free space first; with its reported free MiB."""
        with self.engine.store.transaction(commit=False) as session:
            domain = session.scalars(select(StorageDomain).where(
                StorageDomain.name == domain_name)).one_or_none()
            if domain is None:
                raise InvalidSpec("storage_domain", f"no storage domain named '{domain_name}'")
            hosts = session.scalars(select(Host).join(Host.cluster).where(
                Cluster.id.in_([c.id for c in domain.clusters]),
                Host.status == HostStatus.UP).order_by(Host.name)).all()
            best: tuple[int, HostRef, int | None] | None = None
            for host in hosts:
                entry = next((e for e in host.storage_domains or []
                              if isinstance(e, dict) and e.get("name") == domain_name), None)
                if entry is None or not entry.get("available"):
                    continue
                free = entry.get("free_mib")
                rank = free if isinstance(free, int) else -1
                if best is None or rank > best[0]:
                    best = (rank, HostRef.of(host), free if isinstance(free, int) else None)
            if best is None:
                raise KestrelError(f"no Up host of a cluster storage domain '{domain_name}' "
                                   "is attached to reports it available", domain=domain_name)
            return best[1], best[2]

    @retry_on_conflict
    def _register(self, name: str, domain_name: str, fmt: str, mib: int, content_type: str,
                  description: str, replacing: str | None) -> tuple[str, str]:
        """A new locked volume row: (volume id, image id). The domain's row is written in
        the same transaction, so two registrations of one disk name serialize there (the
        second re-reads, finds the first locked, and is a Conflict naming the disk)."""
        with self.engine.store.transaction() as session:
            domain = session.scalars(select(StorageDomain).where(
                StorageDomain.name == domain_name)).one()
            if name:
                other = _floating(session, name, exclude=replacing)
                if other is not None:
                    raise Conflict(f"disk '{name}' is being uploaded (locked)"
                                   if other.status == "locked" else
                                   f"disk '{name}' already exists", disk=name)
            flag_modified(domain, "description")
            volume = Volume(id=str(uuid.uuid4()), image_id=str(uuid.uuid4()),
                            storage_domain=domain_name, format=fmt, size_mib=mib,
                            content_type=content_type, name=name, description=description,
                            status="locked", readonly=content_type == "iso")
            session.add(volume)
            audit(session, "disk", name or volume.id, f"upload to storage domain "
                  f"'{domain_name}' started")
            return volume.id, volume.image_id

    @retry_on_conflict
    def _job_started(self, volume_id: str, job: str, host: str) -> None:
        volumes.record_job(self.engine, volume_id, job, host)

    @retry_on_conflict
    def _registered(self, volume_id: str, result: dict, replacing: str | None) -> dict:
        with self.engine.store.transaction() as session:
            volume = session.get(Volume, volume_id)
            if volume is None:
                raise KestrelError(f"volume {volume_id} was removed while it was uploaded")
            volume.status, volume.job_id, volume.job_host = "ok", "", ""
            volume.sha256 = str(result.get("sha256") or "")
            volume.size_mib = int(result.get("size_mib") or volume.size_mib)
            volume.format = str(result.get("format") or volume.format)
            if replacing is not None:
                old = session.get(Volume, replacing)
                if old is not None:
                    session.delete(old)
            audit(session, "disk", volume.name or volume.id, "upload finished "
                  f"(sha256 {volume.sha256})")
            session.flush()
            return volume_dict(volume)

    @retry_on_conflict
    def _unregister(self, volume_id: str) -> None:
        with self.engine.store.transaction() as session:
            volume = session.get(Volume, volume_id)
            if volume is not None:
                audit(session, "disk", volume.name or volume.id, "upload failed; the volume "
                      "was removed", severity="warning")
                session.delete(volume)

    def _delete_files(self, host: HostRef, volumes: list[dict]) -> None:
        try:
            self.engine.agent(host.address, host.port).delete_volumes(volumes)
        except KestrelError:
            pass  # a replaced floating disk's old file: storage keeps an orphan, reported

    # -- download -----------------------------------------------------------------------------

    def download(self, name: str, path: str | None = None, *, stream: BinaryIO | None = None,
                 fmt: str | None = None, volume_id: str | None = None,
                 progress: Progress | None = None, check_mode: bool = False) -> Outcome:
        """Write the disk (a floating disk by ``name``, or any volume by ``volume_id``) to
        ``path`` on this machine or to ``stream``, flattened, in ``fmt`` (default the
        volume's)."""
        if (path is None) == (stream is None):
            raise InvalidSpec("download_image_path", "give a path or a stream (one of them)")
        plan = self.download_plan(name, fmt=fmt, volume_id=volume_id)
        if stream is not None:
            if check_mode:
                return Outcome(True, plan.entity)
            started = time.monotonic()
            with self.exported(plan, progress) as export:
                got = export.write_to(stream, progress)
            return Outcome(True, {**export.entity, "transferred_bytes": got["received"],
                                  "download_seconds": round(time.monotonic() - started, 3)})
        assert path is not None
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise InvalidSpec("download_image_path", f"directory {directory} does not exist")
        if os.path.isfile(path) and plan.unchanged(file_sha256(path)):
            return Outcome(False, {**plan.entity, "download_image_path": path})
        if check_mode:
            return Outcome(True, {**plan.entity, "download_image_path": path})
        started = time.monotonic()
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                    suffix=".part")  # 0600 until renamed
        try:
            with self.exported(plan, progress) as export, os.fdopen(fd, "wb") as out:
                fd = -1
                got = export.write_to(out, progress)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if os.path.exists(temp):
                os.unlink(temp)
            raise
        return Outcome(True, {**export.entity, "download_image_path": path,
                              "transferred_bytes": got["received"],
                              "download_seconds": round(time.monotonic() - started, 3)})

    def download_plan(self, name: str, *, vm: str | None = None, fmt: str | None = None,
                      volume_id: str | None = None) -> DownloadPlan:
        """What a download of the disk (floating, a VM's with ``vm``, or the volume
        ``volume_id``) would send; checks that it can be read now."""
        if fmt is not None and fmt not in FORMATS:
            raise InvalidSpec("format", f"must be qcow2 or raw, got {fmt!r}")
        if vm is not None:
            volume_id = self._vm_volume(vm, name)
        with self.engine.store.transaction(commit=False) as session:
            volume = session.get(Volume, volume_id) if volume_id else _floating(session, name)
            if volume is None:
                raise NotFound("disk", name)
            if volume.status != "ok":
                raise Conflict(f"disk '{name}' is {volume.status}", disk=name)
            source = {**agent_volume_of(volume), "format": volume.format}
            chain = [{"image": p.image_id, "volume": p.id, "format": p.format}
                     for p in volume.chain()]
            entity = volume_dict(volume)
        return DownloadPlan(name, {**entity, "format": fmt or entity["format"]}, source, chain,
                            entity["format"], entity["sha256"])

    @contextmanager
    def exported(self, plan: DownloadPlan,
                 progress: Progress | None = None) -> Iterator[Export]:
        """The disk exported (flattened) on a host, ready to stream: its entity has the
        bytes' ``sha256`` and ``length``. The host's copy goes at the end."""
        what = f"download of disk '{plan.name}'"
        job_context.check_cancelled(what)
        host, _free = self._host_for(plan.entity["storage_domain"])
        agent = self.engine.agent(host.address, host.port)
        job = agent.start_export(plan.source, plan.chain, plan.entity["format"])["job"]
        try:
            result = volume_jobs.wait(agent, job, forget=False,
                                      progress=_job_progress(progress))
            yield Export(agent, job, {**plan.entity, "sha256": str(result.get("sha256")),
                                      "length": int(result.get("length") or 0)}, what)
        finally:
            _forget(agent, job)

    # -- a VM's disk ---------------------------------------------------------------------------

    def upload_vm_disk(self, vm: str, name: str, *, settings: dict, check_mode: bool = False,
                       **upload) -> Outcome:
        """Upload a volume and attach it to ``vm`` as disk ``name`` (as an attach of an
        existing volume). A disk the VM already has is left alone (its content is the
        guest's now); ``force`` does not replace it."""
        with self.engine.store.transaction(commit=False) as session:
            row = get_vm(session, vm)
            device = next((d for d in row.devices_of(DeviceType.DISK) if d.name == name), None)
            existing = dict(device.spec) if device is not None else None
        if existing is not None:
            if upload.get("force"):
                raise Conflict(f"VM '{vm}' has a disk '{name}' already; an upload does not "
                               "replace a VM's disk (detach or remove it first)", disk=name)
            return Outcome(False, {"vm": vm, "name": name, **existing})
        if "storage_domain" not in settings:
            raise InvalidSpec("storage_domain", "is required to upload a disk")
        uploaded = self.upload(name, storage_domain=settings["storage_domain"],
                               fmt=settings.get("format"), size=settings.get("size"),
                               floating=False, check_mode=check_mode, **upload)
        disk = uploaded.entity or {}
        if check_mode:
            return Outcome(True, {"vm": vm, **disk, "name": name})
        try:
            attached = self.engine.vm_devices.disk(
                vm, name, settings={**settings, "size": f"{disk['size_mib']}MiB",
                                    "format": disk["format"]},
                volume={"image_id": disk["image_id"], "volume_id": disk["volume_id"]})
        except BaseException:
            self._delete_files(self._host_for(disk["storage_domain"])[0], [
                {"domain": disk["storage_domain"], "image": disk["image_id"],
                 "volume": disk["volume_id"]}])
            self._remove_row(disk["volume_id"])
            raise
        progress = {k: disk[k] for k in ("sha256", "transferred_bytes", "upload_seconds")}
        return Outcome(True, {**(attached.entity or {}), **progress}, attached.diff)

    def download_vm_disk(self, vm: str, name: str, path: str | None = None,
                         **kwargs) -> Outcome:
        outcome = self.download(name, path, volume_id=self._vm_volume(vm, name), **kwargs)
        return Outcome(outcome.changed, {"vm": vm, **(outcome.entity or {}), "name": name})

    def _vm_volume(self, vm: str, name: str) -> str:
        with self.engine.store.transaction(commit=False) as session:
            row = get_vm(session, vm)
            device = next((d for d in row.devices_of(DeviceType.DISK) if d.name == name), None)
            if device is None or not device.spec.get("volume_id"):
                raise NotFound("disk", f"{vm}/{name}")
            return str(device.spec["volume_id"])

    def reconcile(self) -> list[str]:
        """See the module function: the engine loop's pass over locked volumes."""
        return reconcile(self.engine)

    # -- floating disks ----------------------------------------------------------------------

    def floating(self, name: str) -> dict:
        found = self._floating(name)
        if found is None:
            raise NotFound("disk", name)
        return found

    def list(self) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            return [volume_dict(v) for v in session.scalars(
                select(Volume).where(Volume.name != "", Volume.template_id.is_(None))
                .order_by(Volume.name))]

    def page(self, *, offset: int = 0, limit: int = listing.DEFAULT_LIMIT,
             name: str | None = None, content_type: str | None = None,
             status: str | None = None, visible: ColumnElement | None = None) -> dict:
        """One page of the floating disks, by name (services.listing); ``visible``
        narrows the rows."""
        with self.engine.store.transaction(commit=False) as session:
            query = select(Volume).where(Volume.name != "", Volume.template_id.is_(None)) \
                .order_by(Volume.name, Volume.created_at, Volume.id)
            if content_type is not None:
                query = query.where(Volume.content_type == choice(
                    "content_type", content_type, CONTENT_TYPES))
            if status is not None:
                status = choice("status", status, VOLUME_STATUSES)
            return listing.page(session, query, to_dict=volume_dict, offset=offset,
                                limit=limit, name=name, name_column=Volume.name,
                                status=status, status_column=Volume.status, visible=visible)

    def remove(self, name: str, *, check_mode: bool = False) -> Outcome:
        """Remove a floating disk and its file."""
        with self.engine.store.transaction(commit=False) as session:
            volume = _floating(session, name)
            if volume is None:
                return Outcome(False, {"name": name})
            if volume.status == "locked":
                raise Conflict(f"disk '{name}' is being uploaded (locked)", disk=name)
            if session.scalars(select(Volume.id).where(Volume.parent_id == volume.id)).first():
                raise Conflict(f"disk '{name}' is the backing volume of other volumes",
                               disk=name)
            target = agent_volume_of(volume)
        if check_mode:
            return Outcome(True, {"name": name})
        host, _free = self._host_for(target["domain"])
        self.engine.agent(host.address, host.port).delete_volumes([target])
        self._remove_row(target["volume"])
        return Outcome(True, {"name": name})

    @retry_on_conflict
    def _remove_row(self, volume_id: str) -> None:
        with self.engine.store.transaction() as session:
            volume = session.get(Volume, volume_id)
            if volume is not None:
                audit(session, "disk", volume.name or volume.id, "removed")
                session.delete(volume)


def reconcile(engine) -> list[str]:
    """Fail and remove the ``locked`` volumes whose agent job is gone: the agent was
    restarted (its jobs with it), or the engine died mid-upload and the agent forgot
    the job. Asks the host to delete what the job left; a host that does not answer
    is asked again next round. Returns the ids removed. Runs at the engine loop's
    start and every host interval, so after a crash storage and database agree."""
    with engine.store.transaction(commit=False) as session:
        locked = [(v.id, v.name, agent_volume_of(v), v.job_id, HostRef.of(session.scalars(
                   select(Host).where(Host.name == v.job_host)).one_or_none()))
                  for v in session.scalars(select(Volume).where(
                      Volume.status == "locked", Volume.job_id != ""))]
    removed = []
    for volume_id, name, target, job, host in locked:
        if host is not None:
            agent = engine.agent(host.address, host.port)
            try:
                agent.job(job)
                continue  # still running or finished: its owner records it
            except NotFound:
                pass
            except KestrelError:
                continue  # unreachable: we cannot tell yet
            try:
                agent.delete_volumes([target])
            except KestrelError:
                continue
        if _remove_lost(engine, volume_id, job, name):
            removed.append(volume_id)
    return removed


@retry_on_conflict
def _remove_lost(engine, volume_id: str, job: str, name: str) -> bool:
    """An upload's volume goes; a template's or a VM's copy (its owner refers to it)
    stays as an ``illegal`` row, with its template, for a removal to finish."""
    with engine.store.transaction() as session:
        volume = session.get(Volume, volume_id)
        if volume is None or volume.status != "locked" or volume.job_id != job:
            return False
        lost = f"the job writing volume {volume_id} ({job}) was lost (agent restarted or " \
               "writer gone)"
        if volume.template is not None:
            volume.status = volume.template.status = "illegal"
            audit(session, "template", volume.template.name, f"{lost}; the template version "
                  f"{volume.template.version_number} is illegal: remove it", severity="warning")
        elif owners := volumes.users(session, volume_id):
            volume.status = "illegal"
            vm, disk = owners[0]
            audit(session, "vm", vm, f"{lost}; disk '{disk}' is illegal: remove the VM",
                  severity="warning")
        else:
            audit(session, "disk", name or volume_id, f"{lost}; the volume was removed",
                  severity="warning")
            session.delete(volume)
        return True


def agent_volume_of(volume: Volume) -> dict:
    """The delete_volumes form of a volume."""
    return {"domain": volume.storage_domain, "image": volume.image_id, "volume": volume.id}


def _floating(session, name: str, exclude: str | None = None) -> Volume | None:
    query = select(Volume).where(Volume.name == name, Volume.template_id.is_(None))
    if exclude:
        query = query.where(Volume.id != exclude)
    return session.scalars(query.order_by(Volume.created_at)).first()


def _check_source(path: str | None, url: str | None, stream: BinaryIO | None = None,
                  length: int | None = None) -> str:
    if [bool(path), bool(url), stream is not None].count(True) != 1:
        raise InvalidSpec("upload_image_path", "give upload_image_path or upload_image_url "
                                               "(one of them)")
    if stream is not None:
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise InvalidSpec("upload_length", f"the stream's length in bytes (a positive "
                                               f"integer) is required, got {length!r}")
        return "stream"
    if path:
        if not os.path.isfile(path):
            raise InvalidSpec("upload_image_path", f"{path} is not a file")
        if not os.access(path, os.R_OK):
            raise InvalidSpec("upload_image_path", f"{path} is not readable")
        return path
    assert url is not None
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise InvalidSpec("upload_image_url", "must be an http or https URL")
    return url


def _stream_sha256(stream: BinaryIO, length: int) -> str:
    digest, left = hashlib.sha256(), length
    while left and (piece := stream.read(min(_HASH_PIECE, left))):
        digest.update(piece)
        left -= len(piece)
    return digest.hexdigest()


def _bytes_progress(progress: Progress | None, phase: str, total: int,
                    what: str) -> Callable[[int], None]:
    """Called after each piece moved: the caller's progress, the job's (the share of
    the bytes moved), and the point where a cancel stops the transfer. (The agent's
    job after it reports to the job itself: volume_jobs.wait.)"""
    job = job_context.current()

    def moved(done: int) -> None:
        fraction = done / total if total else 0.0
        if progress is not None:
            progress({"phase": phase, "done_bytes": done, "total_bytes": total,
                      "progress": 100.0 * fraction})
        job.progress(int(100 * fraction), phase)
        job_context.check_cancelled(what)
    return moved


def _job_progress(progress: Progress | None) -> Progress | None:
    if progress is None:
        return None
    return lambda job: progress({"phase": job.get("phase") or job.get("kind", ""),
                                 "done_bytes": job.get("done_bytes", 0),
                                 "total_bytes": job.get("total_bytes", 0),
                                 "progress": job.get("progress", 0)})


def _forget(agent, job: str | None) -> None:
    if not job:
        return
    try:
        agent.forget_job(job)
    except KestrelError:
        pass  # already forgotten, or the agent is gone (it forgets by itself)
