"""What the OpenAPI document says about each operation: its response bodies (so a
schema-driven tester can check every answer) and the x-kestrel-* extensions the remote
client relies on."""

from __future__ import annotations

from typing import Any

from engine_lib.api.errors import ERROR_SCHEMA
from engine_lib.api.operations import Operation

__all__ = ["JOB", "LOGIN", "PAGE", "extensions", "responses"]

_OBJECT: dict[str, Any] = {"type": "object"}
_NULLABLE_OBJECT: dict[str, Any] = {"anyOf": [{"type": "object"}, {"type": "null"}]}
_TIME: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}]}

OUTCOME: dict[str, Any] = {
    "type": "object", "required": ["changed", "entity", "diff"],
    "properties": {"changed": {"type": "boolean"}, "entity": _NULLABLE_OBJECT,
                   "diff": _NULLABLE_OBJECT},
}
PAGE: dict[str, Any] = {
    "type": "object", "required": ["items", "total", "offset", "limit"],
    "properties": {"items": {"type": "array", "items": _OBJECT},
                   "total": {"type": "integer"}, "offset": {"type": "integer"},
                   "limit": {"type": "integer"}},
}
TEXT: dict[str, Any] = {"type": "object", "required": ["text"],
                        "properties": {"text": {"type": "string"}}}
JOB: dict[str, Any] = {
    "type": "object",
    "required": ["id", "operation", "user", "status", "progress", "phase", "created",
                 "ended", "result", "error"],
    "properties": {
        "id": {"type": "string"}, "operation": {"type": "string"}, "user": {"type": "string"},
        "status": {"type": "string", "enum": ["running", "succeeded", "failed", "cancelled"]},
        "progress": {"type": "integer"}, "phase": {"type": "string"}, "created": _TIME,
        "ended": _TIME, "result": {}, "error": _NULLABLE_OBJECT,
    },
}
JOB_ACCEPTED: dict[str, Any] = {"type": "object", "required": ["job"], "properties": {"job": JOB}}
LOGIN: dict[str, Any] = {
    "type": "object", "required": ["token", "id", "expires", "user"],
    "properties": {"token": {"type": "string"}, "id": {"type": "string"},
                   "expires": _TIME, "user": {"type": "string"}},
}
_SUCCESS = {"outcome": OUTCOME, "page": PAGE, "text": TEXT, "value": {}}
_ERRORS = {400: "Invalid request (InvalidSpec names the field)",
           401: "No valid bearer token", 403: "The permission named in the body is missing",
           404: "No such object", 409: "Conflict with the object's state"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*extra: int) -> dict[int | str, dict[str, Any]]:
    described = {**_ERRORS, 413: "The request body is too large",
                 429: "Too many failed logins", 500: "Unexpected engine error",
                 503: "Too many long operations running"}
    return {status: json_body(ERROR_SCHEMA, described[status])
            for status in sorted({*_ERRORS, 500, *extra})}


def responses(operation: Operation, *, has_body: bool) -> dict[int | str, dict[str, Any]]:
    answers: dict[int | str, dict[str, Any]] = {
        200: json_body(_SUCCESS[operation.returns], "The result")}
    extra = [413] if has_body else []
    if operation.long:
        answers[202] = json_body(JOB_ACCEPTED, "Started as a job (GET /jobs/{id})")
        extra.append(503)
    return {**answers, **errors(*extra)}


def extensions(operation: Operation, args: list[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "x-kestrel-args": args,
        # A text value arrives as {"text": ...} (JSON has no bare string body here).
        "x-kestrel-returns": "value" if operation.returns == "text" else operation.returns,
    }
    if operation.returns == "text":
        extra["x-kestrel-unwrap"] = "text"
    if operation.long:
        extra["x-kestrel-long"] = True
    if operation.path_from:
        extra["x-kestrel-path-from"] = dict(operation.path_from)
    if operation.stream:
        extra["x-kestrel-stream"] = operation.stream
        extra["x-kestrel-path-param"] = ("upload_image_path" if operation.stream == "upload"
                                         else "path")
    return extra
