"""Disk images over the engine API: the client's side of the content routes.

The operations marked ``x-kestrel-stream`` take a local file (``x-kestrel-path-param``)
where the local call does. An upload hashes the file, asks with ``check_mode=true``
and no body what the upload would do (an unchanged disk: done, nothing sent), then
streams the file as the body. A download asks the same way (``If-None-Match``: the
sha256 of the file there), then streams the image into a temporary file beside the
target, checks its length and ``X-Kestrel-Sha256`` and renames it into place: the file
appears whole or not at all. Both answer what the local calls answer.

Standard library only (see engine_lib.client).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any

from engine_lib.client.remote import RemoteOutcome
from engine_lib.protocol.errors import InvalidSpec, KestrelError

__all__ = ["PIECE", "download", "upload"]

PIECE = 1 << 20
SHA256_HEADER = "X-Kestrel-Sha256"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while piece := stream.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


def upload(remote, operation, arguments: dict[str, Any]):
    """images.upload / images.upload_vm_disk: the file (or the URL) to a disk."""
    args = dict(arguments)
    args.pop("progress", None)  # a callback does not cross the wire; the job reports
    local = args.pop(operation.path_param or "upload_image_path", None)
    if not local:
        path, query, _ = operation.request(args)
        status, answer = remote.http.json(operation.method, path, query=query)
        return remote.shape(operation, remote.result(status, answer))
    if not os.path.isfile(local) or not os.access(local, os.R_OK):
        raise InvalidSpec("upload_image_path", f"{local} is not a readable file")
    size = os.path.getsize(local)
    if not args.get("image_checksum"):
        args["image_checksum"] = f"sha256:{file_sha256(local)}"
    check_mode = bool(args.pop("check_mode", False))
    path, query, _ = operation.request({**args, "upload_length": size})
    status, answer = remote.http.json(operation.method, path,
                                      query={**query, "check_mode": True})
    preflight = remote.shape(operation, remote.result(status, answer))
    if check_mode or not preflight.changed:
        return preflight
    with open(local, "rb") as body:
        response = remote.http.open(operation.method, path, query=query, body=body,
                                    length=size)
        try:
            status, answer = response.status, _json(response.read())
        finally:
            response.close()
    return remote.shape(operation, remote.result(status, answer))


def download(remote, operation, arguments: dict[str, Any]):
    """images.download / images.download_vm_disk: a disk to a file here."""
    args = dict(arguments)
    args.pop("progress", None)
    target = args.pop(operation.path_param or "path", None)
    if not target:
        raise InvalidSpec("download_image_path", "is required")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise InvalidSpec("download_image_path", f"directory {directory} does not exist")
    check_mode = bool(args.pop("check_mode", False))
    path, query, _ = operation.request(args)
    headers = {"Accept": "application/json"}
    if os.path.isfile(target):
        headers["If-None-Match"] = f'"{file_sha256(target)}"'
    asked = _read_json(remote.http.open("GET", path, query={**query, "check_mode": True},
                                        headers=headers))
    entity = {**(asked.get("entity") or {}), "download_image_path": target}
    if check_mode or not asked.get("changed"):
        return _outcome(bool(asked.get("changed")), entity)
    response = remote.http.open("GET", path, query=query,
                                headers={"Accept": "application/octet-stream"})
    try:
        got = _receive(response, directory, target)
    finally:
        response.close()
    entity.update(sha256=got["sha256"], transferred_bytes=got["received"])
    return _outcome(True, entity)


def _receive(response, directory: str, target: str) -> dict[str, Any]:
    """The answer's bytes into a temporary file beside ``target``, checked, renamed."""
    expected = response.getheader(SHA256_HEADER, "")
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.",
                                suffix=".part")  # 0600 until renamed
    try:
        digest, received = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            while piece := response.read(PIECE):
                digest.update(piece)
                out.write(piece)
                received += len(piece)
            out.flush()
            os.fsync(out.fileno())
        length = response.getheader("Content-Length")
        if length is not None and received != int(length):
            raise KestrelError(f"the engine sent {received} of the image's {length} bytes; "
                               "nothing was written", received=received)
        if digest.hexdigest() != expected:
            raise KestrelError(f"the download's sha256 {digest.hexdigest()} is not the "
                               f"engine's {expected or '(none)'}; nothing was written")
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return {"sha256": expected, "received": received}


def _outcome(changed: bool, entity: dict[str, Any]) -> RemoteOutcome:
    return RemoteOutcome(changed=changed, entity=entity, diff=None)


def _read_json(response) -> dict[str, Any]:
    try:
        return _json(response.read())
    finally:
        response.close()


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        raise KestrelError("the engine API answered with a body that is not JSON") from None
