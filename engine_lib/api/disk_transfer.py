"""Disk content over the API: uploads and downloads of floating disks and VM disks.

An upload's body is the image. It is not held: the event loop passes it to the upload
service, running as a job in a worker thread, through a bounded pipe (byte_pipes), and
the service streams it to a host's agent a piece at a time. ``Content-Length`` is
required and must be exactly what arrives; ``image_checksum`` too, so a client hashes
first and asks with ``check_mode=true`` and no body whether the disk is already there.
The job's progress is the bytes received (GET /jobs) and DELETE /jobs/{id} cancels it;
the PUT answers the job's outcome when it ends. ``upload_image_url`` takes no body.

A download answers the image itself with its sha256 in ``X-Kestrel-Sha256`` (known
before the first byte: the host exports the disk first). It is a job as well (GET /jobs
shows the bytes sent; a cancel, or a client that goes away, ends the stream early, so
the client's check fails and it keeps nothing). ``check_mode=true`` answers the outcome
without bytes, unchanged when ``If-None-Match`` names the sha256 the download would have.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, BinaryIO, cast

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from engine_lib.api import schemas
from engine_lib.api.byte_pipes import Inbound, Outbound
from engine_lib.api.deps import CurrentActor, engine_of, job_runner
from engine_lib.api.operations import BY_ID
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services.actor import Actor, acting_as
from engine_lib.services.results import Outcome

__all__ = ["SHA256_HEADER", "router"]

SHA256_HEADER = "X-Kestrel-Sha256"


def _name() -> Any:
    # A new one per parameter: FastAPI keeps each parameter's name on its Path object.
    return Path(max_length=255)

_TEXT = 255


def _outcome(outcome: Outcome) -> dict[str, Any]:
    return jsonable_encoder({"changed": outcome.changed, "entity": outcome.entity,
                             "diff": outcome.diff})


def _doc(op_id: str, positional: list[str], body: bool) -> dict[str, Any]:
    """The route's OpenAPI: the catalog's extensions, and the raw bytes it sends or answers."""
    operation = BY_ID[op_id]
    extra = schemas.extensions(operation, positional)
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    if body:
        extra["requestBody"] = {"required": False, "content": binary,
                                "description": "The image (none with check_mode or "
                                               "upload_image_url)"}
        responses = schemas.responses(operation, has_body=True)
        responses.pop(202, None)  # the PUT answers when its job has ended
    else:
        extra.pop("x-kestrel-long", None)  # a job (GET /jobs), but the answer is the stream
        extra["x-kestrel-returns"] = "outcome"  # as the local call's, built by the client
        responses = schemas.errors()
        responses[200] = {"description": "The image (X-Kestrel-Sha256: its sha256), or with "
                                         "check_mode the outcome",
                          "headers": {SHA256_HEADER: {"schema": {"type": "string"}}},
                          "content": {**binary, **schemas.json_body(
                              schemas.OUTCOME, "")["content"]}}
    return {"operation_id": op_id, "summary": operation.summary, "tags": ["images"],
            "response_model": None, "responses": responses, "openapi_extra": extra}


router = APIRouter()


# -- uploads ---------------------------------------------------------------------------------


@router.put("/disks/{name}/content", **_doc("images.upload", ["name"], body=True))
async def upload(request: Request, who: CurrentActor, name: str = _name(),
                 storage_domain: str = Query("", max_length=_TEXT),
                 upload_image_url: str | None = Query(None, max_length=4096),
                 upload_length: int | None = Query(None, ge=1),
                 image_format: str = Query("", max_length=16),
                 image_checksum: str = Query("", max_length=80),
                 content_type: str = Query("data", max_length=16),
                 fmt: str | None = Query(None, max_length=16),
                 size: str | None = Query(None, max_length=32),
                 description: str = Query("", max_length=4096),
                 force: bool = Query(False), timeout: float | None = Query(None, gt=0),
                 check_mode: bool = Query(False)) -> JSONResponse:
    options = {"storage_domain": storage_domain, "fmt": fmt, "size": size,
               "description": description}
    return await _upload(request, who, "images.upload", (name,), {"name": name}, options,
                         upload_image_url=upload_image_url, upload_length=upload_length,
                         image_format=image_format, image_checksum=image_checksum,
                         content_type=content_type, force=force, timeout=timeout,
                         check_mode=check_mode)


@router.put("/vms/{vm}/disks/{name}/content",
            **_doc("images.upload_vm_disk", ["vm", "name"], body=True))
async def upload_vm_disk(request: Request, who: CurrentActor, vm: str = _name(),
                         name: str = _name(),
                         settings: str = Query(..., max_length=8192,
                                               description="the disk's settings (JSON object)"),
                         upload_image_url: str | None = Query(None, max_length=4096),
                         upload_length: int | None = Query(None, ge=1),
                         image_format: str = Query("", max_length=16),
                         image_checksum: str = Query("", max_length=80),
                         content_type: str = Query("data", max_length=16),
                         force: bool = Query(False), timeout: float | None = Query(None, gt=0),
                         check_mode: bool = Query(False)) -> JSONResponse:
    return await _upload(request, who, "images.upload_vm_disk", (vm, name),
                         {"vm": vm, "name": name}, {"settings": _settings(settings)},
                         upload_image_url=upload_image_url, upload_length=upload_length,
                         image_format=image_format, image_checksum=image_checksum,
                         content_type=content_type, force=force, timeout=timeout,
                         check_mode=check_mode)


def _settings(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidSpec("settings", "must be a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidSpec("settings", "must be a JSON object")
    return value


def _content_length(request: Request) -> int | None:
    text = request.headers.get("content-length")
    if text is None:
        return None
    if not text.isdigit():
        raise InvalidSpec("Content-Length", f"must be a number of bytes, got {text!r}")
    return int(text)


async def _upload(request: Request, who: Actor, op_id: str, positional: tuple[str, ...],
                  path: dict[str, str], options: dict[str, Any], *,
                  upload_image_url: str | None, upload_length: int | None,
                  check_mode: bool, **upload: Any) -> JSONResponse:
    engine = engine_of(request)
    function = getattr(engine.images, BY_ID[op_id].function)
    length = _content_length(request)
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        raise InvalidSpec("Content-Length", "is required (a chunked body is not taken)")
    await run_in_threadpool(_check, engine, who, op_id, {**path, **options})
    sent = bool(length)
    if sent and (check_mode or upload_image_url):
        raise InvalidSpec("Content-Length", "no body with check_mode or upload_image_url")
    if upload_image_url:
        call = _bound(function, positional, options, upload_image_url=upload_image_url,
                      check_mode=check_mode, **upload)
    elif not sent:
        if not check_mode:
            raise InvalidSpec("Content-Length", "the image is the body: its length is "
                                                "required (check_mode=true asks without it)")
        # A preflight: what the upload of upload_length bytes with this checksum would do.
        call = _bound(function, positional, options, upload_stream=io.BytesIO(),
                      upload_length=upload_length, check_mode=True, **upload)
    else:
        assert length is not None
        if upload_length is not None and upload_length != length:
            raise InvalidSpec("upload_length", f"{upload_length} is not the body's "
                                               f"Content-Length {length}")
        if not upload["image_checksum"]:
            raise InvalidSpec("image_checksum", "is required with a body (sha256:<hex>): "
                                                "the client hashes the image first")
        return await _stream_upload(request, who, op_id, function, positional, options,
                                    length, upload)
    if check_mode:
        return JSONResponse(_outcome(await run_in_threadpool(_acting, who, call)))
    return JSONResponse(await _as_job(request, who, op_id, lambda: _outcome(call())))


async def _stream_upload(request: Request, who: Actor, op_id: str, function,
                         positional: tuple[str, ...], options: dict[str, Any], length: int,
                         upload: dict[str, Any]) -> JSONResponse:
    pipe = Inbound(asyncio.get_running_loop())
    call = _bound(function, positional, options, upload_stream=pipe, upload_length=length,
                  **upload)

    def run() -> dict[str, Any]:
        try:
            return _outcome(call())
        finally:
            pipe.close()  # whatever it read: the rest of the body is not wanted

    finished = asyncio.wrap_future(await _start_job(request, who, op_id, run))
    # The body is passed on until it ends or the job does (refused, cancelled, or the
    # disk was there already): then what is left of it is not read.
    pump = asyncio.create_task(_pump(request, pipe, length))
    try:
        return JSONResponse(await finished)
    finally:
        pump.cancel()


async def _pump(request: Request, pipe: Inbound, length: int) -> None:
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > length:
                break
            if chunk and not await pipe.put(chunk):
                return
    except ClientDisconnect:
        pass
    if received != length:
        pipe.finish(InvalidSpec("Content-Length", f"the body sent {received} bytes"
                                f"{' or more' if received > length else ''}, not the "
                                f"{length} it declared; nothing was kept"))
    else:
        pipe.finish()


# -- running a call ---------------------------------------------------------------------------


def _check(engine, who: Actor, op_id: str, args: dict[str, Any]) -> None:
    """The catalog's permission for the operation (access.check, the one decision)."""
    with acting_as(who):
        check = BY_ID[op_id].rule(engine, args)
        if check is not None:
            engine.access.check(*check)


def _bound(function, positional: tuple[str, ...], options: dict[str, Any],
           **kwargs: Any) -> Callable[[], Any]:
    return lambda: function(*positional, **options, **kwargs)


def _acting(who: Actor, call: Callable[[], Any]) -> Any:
    with acting_as(who):
        return call()


async def _as_job(request: Request, who: Actor, op_id: str,
                  call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wrap_future(await _start_job(request, who, op_id, call))


async def _start_job(request: Request, who: Actor, op_id: str,
                     call: Callable[[], dict[str, Any]]) -> Future:
    """Run ``call`` as a job (GET /jobs shows it, DELETE cancels it); a future of its
    result for this request to answer with, settled once the job's row records the same."""
    _, outcome = await run_in_threadpool(
        lambda: _acting(who, lambda: job_runner(request).submit(op_id, call)))
    return outcome


# -- downloads --------------------------------------------------------------------------------


@router.get("/disks/{name}/content", **_doc("images.download", ["name", "path"], body=False))
async def download(request: Request, who: CurrentActor, name: str = _name(),
                   fmt: str | None = Query(None, max_length=16),
                   check_mode: bool = Query(False)):
    return await _download(request, who, "images.download", {"name": name}, name, None, fmt,
                           check_mode)


@router.get("/vms/{vm}/disks/{name}/content",
            **_doc("images.download_vm_disk", ["vm", "name", "path"], body=False))
async def download_vm_disk(request: Request, who: CurrentActor, vm: str = _name(),
                           name: str = _name(), fmt: str | None = Query(None, max_length=16),
                           check_mode: bool = Query(False)):
    return await _download(request, who, "images.download_vm_disk", {"vm": vm, "name": name},
                           name, vm, fmt, check_mode)


async def _download(request: Request, who: Actor, op_id: str, path: dict[str, str], name: str,
                    vm: str | None, fmt: str | None, check_mode: bool):
    engine = engine_of(request)
    await run_in_threadpool(_check, engine, who, op_id, path)
    plan = await run_in_threadpool(_acting, who, lambda: engine.images.download_plan(
        name, vm=vm, fmt=fmt))
    have = request.headers.get("if-none-match", "").strip().strip('"')
    if check_mode:
        unchanged = bool(have) and plan.unchanged(have)
        return JSONResponse(_outcome(Outcome(not unchanged, {**plan.entity, **path})))
    loop = asyncio.get_running_loop()
    pipe = Outbound(loop)
    ready: asyncio.Future = loop.create_future()

    def produce() -> dict[str, Any]:
        """The job: export on a host, then the bytes into the pipe as the client reads."""
        try:
            with engine.images.exported(plan) as export:
                loop.call_soon_threadsafe(_settle, ready, export.entity)
                got = export.write_to(cast(BinaryIO, pipe))
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, ready, exc)
            pipe.finish(exc)
            raise
        pipe.finish()
        return _outcome(Outcome(True, {**export.entity, **path,
                                       "transferred_bytes": got["received"]}))

    await _start_job(request, who, op_id, produce)
    entity = await ready
    if isinstance(entity, BaseException):
        raise entity

    async def body():
        try:
            async for chunk in pipe:
                yield chunk
        finally:
            pipe.close()  # the client went away, or all was sent: the producer stops

    return StreamingResponse(body(), media_type="application/octet-stream", headers={
        SHA256_HEADER: entity["sha256"], "Content-Length": str(entity["length"])})


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)
