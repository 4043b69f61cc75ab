"""The FastAPI application: the catalog's routes, the API's own routes, error handlers
and the body limit, under /api/v1. No Swagger UI (it loads from a CDN)."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from fastapi import FastAPI

import engine_lib
from engine_lib.api import builtin, errors
from engine_lib.api.jobs import DEFAULT_WORKERS, JobRunner
from engine_lib.api.limits import DEFAULT_MAX_BODY, BodyLimit
from engine_lib.api.routes import build_router

__all__ = ["PREFIX", "create_app"]

log = logging.getLogger("kestrel.api.app")

PREFIX = "/api/v1"
# Disk content (H4's streams) bypasses the JSON body limit: it is streamed, not held.
_STREAMED = ("/content",)


def _stream_router():
    try:
        module = importlib.import_module("engine_lib.api.disk_transfer")
    except ImportError:
        return None
    return module.router


def create_app(engine, *, max_body: int = DEFAULT_MAX_BODY, workers: int = DEFAULT_WORKERS,
               jobs: JobRunner | None = None) -> FastAPI:
    app = FastAPI(title="kestrel engine API", version=engine_lib.__version__,
                  openapi_url=f"{PREFIX}/openapi.json", docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.jobs = jobs or JobRunner(engine.store, workers)
    app.include_router(builtin.router, prefix=PREFIX)
    app.include_router(build_router(engine), prefix=PREFIX)
    streams = _stream_router()
    if streams is not None:
        app.include_router(streams, prefix=PREFIX)
    app.add_middleware(BodyLimit, max_body=max_body, unlimited_paths=_STREAMED)
    errors.install(app)  # its last-resort middleware outside the body limit
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document without its 422 answers: validation errors are 400 here."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema
