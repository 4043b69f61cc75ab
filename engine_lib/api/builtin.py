"""The API's own routes: its self-description, logins, who am I, and the caller's jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

import engine_lib
from engine_lib.api import schemas
from engine_lib.api.deps import CurrentActor, engine_of, job_runner
from engine_lib.api.operations import CATALOG
from engine_lib.api.routes import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET
from engine_lib.protocol.errors import PermissionDenied
from engine_lib.services.actor import Actor, acting_as

__all__ = ["router"]

router = APIRouter()

MAX_LOGIN_SECONDS = 30 * 86400
_JOB_STATUS = "^(running|succeeded|failed|cancelled)$"
# No NUL: PostgreSQL text cannot hold one (its driver fails the whole query).
_NO_NUL = r"^[^\x00]*$"
_JobId = Annotated[str, Path(max_length=36, pattern=_NO_NUL)]


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64, pattern=_NO_NUL)
    password: str = Field(min_length=1, max_length=4096)
    expires_in: int = Field(3600, ge=60, le=MAX_LOGIN_SECONDS)


@router.get("/", operation_id="api.describe", summary="What this API is and where to start",
            tags=["api"], response_model=None,
            responses={200: schemas.json_body({"type": "object"}, "Version and links"),
                       **schemas.errors()})
def describe(request: Request) -> dict[str, Any]:
    prefix = request.scope.get("root_path", "") + "/api/v1"
    links = {"openapi": f"{prefix}/openapi.json", "token": f"{prefix}/auth/token",
             "whoami": f"{prefix}/auth/whoami", "jobs": f"{prefix}/jobs"}
    for operation in CATALOG:
        if operation.method == "GET" and "{" not in operation.path:
            links[operation.path.strip("/")] = prefix + operation.path
    return {"version": engine_lib.__version__, "links": links}


@router.post("/auth/token", operation_id="auth.login", summary="Log in: a token for a "
             "username and password", tags=["auth"], status_code=201, response_model=None,
             responses={201: schemas.json_body(schemas.LOGIN, "The new login token"),
                        **schemas.errors(413, 429)})
def login(request: Request, body: Login) -> JSONResponse:
    client = request.client.host if request.client else ""
    result = engine_of(request).authn.login(body.username, body.password, client=client,
                                            expires_in=body.expires_in)
    return JSONResponse(result, status_code=201)


@router.get("/auth/whoami", operation_id="auth.whoami", summary="Who the token acts as",
            tags=["auth"], response_model=None,
            responses={200: schemas.json_body({"type": "object"}, "The caller"),
                       **schemas.errors()})
def whoami(request: Request, actor: CurrentActor) -> dict[str, Any]:
    engine = engine_of(request)
    # The caller's own grants: read as the engine, since listing grants needs access.manage.
    grants = engine.permissions.info(user=actor.name)
    for user in engine.users.info(actor.name):
        for group in user.get("groups") or ():
            grants.extend(engine.permissions.info(group=group))
    return {"user": actor.name, "token_id": actor.token_id, "token_role": actor.token_role,
            "permissions": [{"role": grant["role"], "object_type": grant["object_type"],
                             "object_name": grant["object_name"]} for grant in grants]}


def _view_all(request: Request, actor: Actor) -> bool:
    with acting_as(actor):
        try:
            engine_of(request).access.check("job.view_all", "system")
        except PermissionDenied:
            return False
    return True


_JOB_RESPONSE = {200: schemas.json_body(schemas.JOB, "The job"), **schemas.errors()}


@router.get("/jobs", operation_id="jobs.info", summary="Long operations (own; every user's "
            "with job.view_all)", tags=["jobs"], response_model=None,
            responses={200: schemas.json_body(schemas.PAGE, "A page of jobs"),
                       **schemas.errors()})
def jobs_info(request: Request, actor: CurrentActor,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
              limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
              status: Annotated[str | None, Query(pattern=_JOB_STATUS)] = None,
              ) -> dict[str, Any]:
    view_all = _view_all(request, actor)
    with acting_as(actor):
        return job_runner(request).page(offset=offset, limit=limit, status=status,
                                        view_all=view_all)


@router.get("/jobs/{id}", operation_id="jobs.get", summary="A job: progress, result, error",
            tags=["jobs"], response_model=None, responses=_JOB_RESPONSE)
def jobs_get(request: Request, id: _JobId, actor: CurrentActor) -> dict[str, Any]:
    view_all = _view_all(request, actor)
    with acting_as(actor):
        return job_runner(request).get(id, view_all=view_all)


@router.delete("/jobs/{id}", operation_id="jobs.cancel", summary="Ask a running job to stop",
               tags=["jobs"], status_code=202, response_model=None,
               responses={202: schemas.json_body(schemas.JOB, "Cancel requested"),
                          **schemas.errors()})
def jobs_cancel(request: Request, id: _JobId, actor: CurrentActor) -> JSONResponse:
    view_all = _view_all(request, actor)
    with acting_as(actor):
        return JSONResponse(job_runner(request).cancel(id, view_all=view_all), status_code=202)
