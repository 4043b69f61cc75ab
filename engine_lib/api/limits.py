"""The request body limit, counted as the bytes arrive: a Content-Length over the limit
is refused before anything is read, and a body that runs past the limit (chunked, or
longer than it declared) is cut off at the limit, so no route ever holds more.

Pure ASGI middleware: Starlette's BaseHTTPMiddleware would buffer the body first."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException

from engine_lib.protocol.errors import RequestTooLarge

__all__ = ["DEFAULT_MAX_BODY", "BodyLimit", "too_large_message"]

DEFAULT_MAX_BODY = 1024 * 1024


def too_large_message(max_body: int) -> str:
    return f"the request body exceeds {max_body} bytes"


class BodyLimit:
    def __init__(self, app: Any, max_body: int = DEFAULT_MAX_BODY,
                 unlimited_paths: tuple[str, ...] = ()):
        self.app = app
        self.max_body = max_body
        # Path suffixes that stream their body elsewhere (disk content uploads).
        self.unlimited_paths = unlimited_paths

    def _error(self) -> RequestTooLarge:
        return RequestTooLarge(too_large_message(self.max_body), max_body=self.max_body)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].endswith(self.unlimited_paths):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_body
            except ValueError:
                too_large = False  # the server refuses a malformed length itself
            if too_large:
                await self._refuse(send)
                return
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge(self.max_body)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps(self._error().to_dict()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised from ``receive``: FastAPI lets an HTTPException through its body parsing
    (anything else becomes a 400), and errors.py answers it as RequestTooLarge."""

    def __init__(self, max_body: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(max_body))
