"""Every error the API answers has one body, ``KestrelError.to_dict()``: a typed code, a
message and details. Request validation is 400 InvalidSpec naming the field (never
FastAPI's 422); anything unexpected is a 500 InternalError whose trace stays in the log."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine_lib.protocol.errors import (
    InternalError,
    InvalidSpec,
    KestrelError,
    NotFound,
    RequestTooLarge,
)

__all__ = ["ERROR_SCHEMA", "CatchUnexpected", "error_response", "install", "invalid_spec"]

log = logging.getLogger("kestrel.api.errors")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message", "details"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                   "details": {"type": "object"}},
}

# Where a parameter came from, as FastAPI's error locations name it; the field is
# named as the caller wrote it (a body key path, or the query/path parameter).
_SOURCES = ("body", "query", "path", "header", "cookie")


def error_response(error: KestrelError) -> JSONResponse:
    headers = {}
    if error.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if error.http_status == 429 and "retry_after" in error.details:
        headers["Retry-After"] = str(error.details["retry_after"])
    return JSONResponse(error.to_dict(), status_code=error.http_status, headers=headers)


def invalid_spec(errors: list[dict[str, Any]]) -> InvalidSpec:
    """The first validation error as InvalidSpec: 'spec.memory: Input should be ...'."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in first.get("loc", ())]
    if location and location[0] in _SOURCES:
        location = location[1:]
    field = ".".join(location) or "body"
    kind = first.get("type", "")
    if kind == "json_invalid":
        field, reason = "body", f"malformed JSON ({first.get('ctx', {}).get('error', 'invalid')})"
    elif kind == "extra_forbidden":
        reason = "unknown field"
    elif kind == "missing":
        reason = "required"
    else:
        reason = str(first.get("msg", "invalid"))
    return InvalidSpec(field, reason)


async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(invalid_spec(list(exc.errors())))


async def _kestrel(_request: Request, exc: KestrelError) -> JSONResponse:
    if exc.http_status >= 500:
        log.warning("%s: %s", exc.code, exc.message)
    return error_response(exc)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Routing's own answers (no such path, method not allowed) in the same shape.
    if exc.status_code == 404:
        return error_response(NotFound("API path", request.url.path))
    if exc.status_code == 413:
        return error_response(RequestTooLarge(str(exc.detail)))
    if exc.status_code == 405:
        error: KestrelError = InvalidSpec("method", f"{request.method} is not an operation of "
                                                    f"{request.url.path}")
    elif exc.status_code < 500:
        error = InvalidSpec("request", str(exc.detail))
    else:
        error = _unexpected_error()
    error.http_status = exc.status_code
    return error_response(error)


def _unexpected_error() -> InternalError:
    return InternalError("the engine failed unexpectedly; see its log")


class CatchUnexpected:
    """Answer an unexpected exception with a 500 InternalError body and keep the
    connection: Starlette's own last-resort handler re-raises, and the server then drops
    the connection a client may be reusing. Pure ASGI, outside every other middleware."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise  # half a response: only closing the connection tells the client
            await error_response(_unexpected_error())(scope, receive, send)


def install(app: FastAPI) -> None:
    """The handlers, and the last-resort middleware (call after adding other middleware)."""
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(KestrelError, _kestrel)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_middleware(CatchUnexpected)
