"""What every API route shares: who is asking, the permission check, the job runner.

Routes written by hand (disk content streams) use these exactly as the generated ones do:

    @router.put("/disks/{name}/content")
    def upload(name: str, request: Request, who: CurrentActor):
        engine = engine_of(request)
        with acting_as(who):
            require(engine, "disk.create", "system")
            job = job_runner(request).start("images.upload", lambda: ...)

``job_runner(request).start`` runs its call under the actor that is current when it
is called (so call it inside ``acting_as``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from engine_lib.api.jobs import JobRunner
from engine_lib.engine import Engine
from engine_lib.protocol.errors import Unauthenticated
from engine_lib.services.actor import Actor, acting_as

__all__ = ["Actor", "CurrentActor", "acting_as", "bearer_token", "current_actor", "engine_of", "job_runner",
           "require"]

NO_TOKEN = "an Authorization: Bearer <token> header is required"


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def job_runner(request: Request) -> JobRunner:
    return request.app.state.jobs


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(NO_TOKEN)
    return token


def current_actor(request: Request) -> Actor:
    """FastAPI dependency: the actor of the request's bearer token (401 otherwise)."""
    return engine_of(request).authn.actor_for_token(bearer_token(request))


# A route parameter: ``who: CurrentActor``.
CurrentActor = Annotated[Actor, Depends(current_actor)]


def require(engine: Engine, permission: str, object_type: str, name: str = "") -> None:
    """Raise PermissionDenied unless the current actor has ``permission`` on the object
    (or an ancestor); the one decision is engine_lib.services.access."""
    engine.access.check(permission, object_type, name)
