"""Routes generated from the catalog and the services' signatures.

For each operation: parameters named in the path are path parameters; the others are a
JSON body with no unknown fields (PUT, POST) or query parameters (GET, DELETE);
``check_mode`` is always a query parameter. The route checks the operation's permission
under the caller's actor, then calls the facade method (in a job for long operations).
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from annotated_types import Interval
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, FiniteFloat, create_model

from engine_lib.api import schemas
from engine_lib.api.deps import current_actor, engine_of, job_runner
from engine_lib.api.operations import CATALOG, Operation
from engine_lib.protocol.errors import InvalidSpec, PermissionDenied
from engine_lib.services import access
from engine_lib.services.actor import Actor, acting_as
from engine_lib.services.results import Outcome

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "MAX_OFFSET", "NAME_FILTER", "build_router", "glob", "refuse_nul",
           "signature_of"]

log = logging.getLogger("kestrel.api.routes")

MAX_LIMIT = 1000
# What the services page with (engine_lib.services.listing): PostgreSQL's OFFSET is 64-bit,
# but a larger page start than this is no list anyone pages through.
MAX_OFFSET = 2**31 - 1
DEFAULT_LIMIT = 100
NAME_FILTER = 128  # characters
_PAGE_PARAMS = {"offset", "limit", "name", "status"}
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _annotation(function, parameter: inspect.Parameter) -> Any:
    """A parameter's type: the services postpone annotations, so evaluate each one in
    its module (one that cannot be evaluated is Any, like a missing one)."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return Any
    if not isinstance(annotation, str):
        return annotation
    namespace = dict(vars(sys.modules[function.__module__]))
    namespace.update(vars(typing))
    try:
        return eval(annotation, namespace)  # the services' own source
    except Exception:
        return Any


# What a database integer holds (a larger number is a 400 here, not an overflow below),
# and only finite floats (a query string can say "inf").
# Constraints as annotated-types metadata, not a Field: FastAPI keeps them next to a
# parameter's own Query() or Body().
_NARROWED = {int: Annotated[int, Interval(ge=-(2**63), le=2**63 - 1)], float: FiniteFloat}


def _bounded(annotation: Any) -> Any:
    if annotation in _NARROWED:
        return _NARROWED[annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if any(member in _NARROWED for member in members):
            return typing.Union[tuple(_NARROWED.get(m, m) for m in members)]  # noqa: UP007
    return annotation


class Param(typing.NamedTuple):
    name: str
    annotation: Any
    default: Any  # inspect.Parameter.empty when required
    positional: bool


def signature_of(function, operation: Operation) -> list[Param]:
    """The parameters of a facade method the API exposes, in order."""
    return [Param(p.name, _bounded(_annotation(function, p)), p.default, p.kind in _POSITIONAL)
            for p in inspect.signature(function).parameters.values()
            if p.name not in operation.exclude
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def _path_params(operation: Operation) -> list[str]:
    return re.findall(r"{(\w+)}", operation.path)


def glob(pattern: str) -> re.Pattern[str]:
    # Only '*' is special: everything else, '[' and '?' too, is matched literally.
    return re.compile("".join(".*" if part == "*" else re.escape(part)
                              for part in re.split(r"(\*)", pattern)) + r"\Z")


def _render(operation: Operation, value: Any) -> Any:
    if isinstance(value, Outcome):
        return jsonable_encoder({"changed": value.changed, "entity": value.entity,
                                 "diff": value.diff})
    if operation.returns == "text":
        return {"text": value}
    return jsonable_encoder(value)


def _page(engine, operation: Operation, service, function, actor: Actor,
          filters: dict[str, Any], offset: int, limit: int, name: str | None,
          status: str | None) -> dict[str, Any] | JSONResponse:
    paged = getattr(service, "page", None)
    if paged is not None:
        visible = None
        if operation.visible and not actor.is_local:
            with engine.store.transaction(commit=False) as session:
                visible = access.visible(session, operation.visible)
        # A service's page is plain JSON values already (services.listing): walking it
        # with jsonable_encoder (twice: here and in FastAPI's response) cost a page of
        # 100 VMs several times its SQL.
        return JSONResponse(paged(offset=offset, limit=limit, name=name, status=status,
                                  visible=visible, **filters))
    # A service without a SQL page: filter its full list here.
    items = function(**filters)
    if name:
        pattern = glob(name)
        items = [item for item in items if pattern.match(str(item.get("name", "")))]
    if status:
        items = [item for item in items if item.get("status") == status]
    if operation.visible and not actor.is_local:
        items = [item for item in items if _may_read(engine, operation.visible, item)]
    return {"items": jsonable_encoder(items[offset:offset + limit]), "total": len(items),
            "offset": offset, "limit": limit}


def _may_read(engine, object_type: str, item: Mapping[str, Any]) -> bool:
    try:
        engine.access.check("read", object_type, str(item.get("name", "")))
    except PermissionDenied:
        return False
    return True


def refuse_nul(values: Mapping[str, Any], prefix: str = "") -> None:
    """InvalidSpec naming the field of any string with a NUL character: no name or setting
    needs one, and PostgreSQL text cannot hold it (its driver fails the whole query)."""
    for key, value in values.items():
        field = f"{prefix}{key}"
        if "\x00" in field or isinstance(value, str) and "\x00" in value:
            raise InvalidSpec(field, "must not contain a NUL character")
        if isinstance(value, Mapping):
            refuse_nul(value, f"{field}.")
        elif isinstance(value, list):
            refuse_nul({str(index): item for index, item in enumerate(value)}, f"{field}.")


def _apply_path_from(operation: Operation, kwargs: dict[str, Any], path: dict[str, Any]) -> None:
    """vms.ensure: the path's name is the spec's; fill it in or refuse a different one."""
    for param, source in operation.path_from.items():
        argument, _, key = source.partition(".")
        container = kwargs.get(argument)
        if not isinstance(container, dict):
            raise InvalidSpec(argument, "must be an object")
        given = container.setdefault(key, path[param])
        if given != path[param]:
            raise InvalidSpec(source, f"'{given}' differs from the path's {param} "
                                      f"'{path[param]}'")


def _add(router: APIRouter, operation: Operation, function) -> None:
    params = signature_of(function, operation)
    paged_by = getattr(getattr(function, "__self__", None), "page", None)
    if operation.returns == "page" and paged_by is not None:
        # Filters only the SQL page has (events' user, disks' content_type) are query
        # parameters too; a caller's visible clause never is.
        known = {param.name for param in params} | _PAGE_PARAMS | {"visible"}
        params += [param for param in signature_of(paged_by, operation)
                   if param.name not in known]
    names = {param.name for param in params}
    in_path = _path_params(operation)
    paged = operation.returns == "page"
    has_body = operation.method in ("PUT", "POST")
    for name in in_path:
        if name not in names and name not in operation.path_from:
            raise ValueError(f"{operation.id}: path parameter {name} is not a parameter")

    endpoint_params = [
        inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
        inspect.Parameter("actor", inspect.Parameter.KEYWORD_ONLY, annotation=Actor,
                          default=Depends(current_actor)),
    ]

    def add(name: str, annotation: Any, marker: Any, default: Any = inspect.Parameter.empty
            ) -> None:
        # Annotated[type, Query()]: FastAPI then keeps the type's own constraints too.
        endpoint_params.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[annotation, marker],
            default=default))

    for name in in_path:
        add(name, str, Path(max_length=255))
    fields: dict[str, Any] = {}
    for param in params:
        if param.name in in_path or (paged and param.name in _PAGE_PARAMS):
            continue
        required = param.default is inspect.Parameter.empty
        if param.name == "check_mode":
            add("check_mode", bool, Query(), False)
        elif has_body:
            fields[param.name] = (param.annotation, ... if required else param.default)
        else:
            add(param.name, param.annotation, Query(), param.default)
    if paged:
        add("offset", int, Query(ge=0, le=MAX_OFFSET), 0)
        add("limit", int, Query(ge=1, le=MAX_LIMIT), DEFAULT_LIMIT)
        add("name", str | None, Query(max_length=NAME_FILTER,
                                      description="exact, or a glob with '*'"), None)
        if operation.status:
            add("status", str | None, Query(max_length=32), None)
    if fields:
        model = create_model(f"{operation.id.replace('.', '_')}_body",
                             __config__=ConfigDict(extra="forbid"), **fields)
        if any(spec[1] is ... for spec in fields.values()):
            add("body", model, Body())
        else:
            add("body", model | None, Body(), None)

    def endpoint(**values: Any) -> Any:
        request: Request = values.pop("request")
        actor: Actor = values.pop("actor")
        engine = engine_of(request)
        service = getattr(engine, operation.service)
        bound = getattr(service, operation.function)
        body = values.pop("body", None)
        kwargs = dict(values)
        if body is not None:
            kwargs.update(body.model_dump(exclude_unset=True))
        refuse_nul(kwargs)
        path = {name: kwargs[name] for name in in_path}
        if operation.path_from:
            _apply_path_from(operation, kwargs, path)
            for name in operation.path_from:
                kwargs.pop(name, None)
        with acting_as(actor):
            check = operation.rule(engine, {**kwargs, **path})
            if check is not None:
                engine.access.check(*check)
            if paged:
                page_args = {key: kwargs.pop(key, None) for key in _PAGE_PARAMS}
                return _page(engine, operation, service, bound, actor, kwargs,
                             page_args["offset"], page_args["limit"], page_args["name"],
                             page_args["status"])
            if operation.long and not kwargs.get("check_mode"):
                job = job_runner(request).start(operation.id,
                                                lambda: _render(operation, bound(**kwargs)))
                return JSONResponse({"job": job}, status_code=202)
            return _render(operation, bound(**kwargs))

    endpoint.__signature__ = inspect.Signature(endpoint_params)  # type: ignore[attr-defined]
    endpoint.__name__ = operation.id.replace(".", "_")
    router.add_api_route(
        operation.path, endpoint, methods=[operation.method], operation_id=operation.id,
        summary=operation.summary, tags=[operation.service], response_model=None,
        status_code=200, responses=schemas.responses(operation, has_body=has_body),
        openapi_extra=schemas.extensions(operation, [p.name for p in params if p.positional]))


def build_router(engine) -> APIRouter:
    """Routes for every catalog operation the facade offers (streams are written by hand)."""
    router = APIRouter()
    for operation in CATALOG:
        if operation.stream:
            continue
        function = getattr(getattr(engine, operation.service, None), operation.function, None)
        if function is None:
            log.warning("the engine has no %s; its route is left out", operation.id)
            continue
        _add(router, operation, function)
    return router
