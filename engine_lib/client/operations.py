"""The API's operations as the client reads them from the OpenAPI document.

Each operation names its facade path (operationId ``vms.ensure``) and carries the
``x-kestrel-*`` extensions the engine adds: which positional arguments it takes,
where a path parameter comes from inside an argument, whether it runs as a job,
what shape its answer has, and whether it streams a local file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from engine_lib.protocol.errors import InvalidSpec, KestrelError

METHODS = ("get", "put", "post", "delete", "patch")
_PATH_PARAM = re.compile(r"{([^}]+)}")


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str
    args: tuple[str, ...] = ()
    path_from: dict[str, str] = field(default_factory=dict)
    long: bool = False
    returns: str = "value"
    query: frozenset[str] = frozenset()
    body: frozenset[str] | None = None  # the body's properties; None: the operation takes none
    stream: str | None = None
    path_param: str | None = None
    unwrap: str | None = None  # a value the API wraps in an object under this key

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by name, as the service method would bind them."""
        if len(args) > len(self.args):
            raise TypeError(f"{self.operation_id}() takes {len(self.args)} positional "
                            f"arguments but {len(args)} were given")
        bound = dict(zip(self.args, args))
        for name, value in kwargs.items():
            if name in bound:
                raise TypeError(f"{self.operation_id}() got multiple values for '{name}'")
            bound[name] = value
        return bound

    def request(self, bound: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
        """(path with its parameters filled, query, JSON body or None)."""
        from engine_lib.client.http import quote_path

        remaining = dict(bound)
        path = self.path
        for name in self.path_params:
            source = self.path_from.get(name)
            if source is not None:
                value = _dig(bound, source)
            elif name in remaining:
                value = remaining.pop(name)
            else:
                raise TypeError(f"{self.operation_id}() missing required argument '{name}'")
            path = path.replace("{" + name + "}", quote_path(value))
        query = {k: v for k, v in remaining.items() if k in self.query}
        rest = {k: v for k, v in remaining.items() if k not in self.query}
        if self.body is None:
            if rest:
                raise TypeError(f"{self.operation_id}() got unexpected arguments "
                                f"{', '.join(sorted(rest))}")
            return path, query, None
        # A body that is one argument itself (not an object of named arguments).
        only = next(iter(rest), None)
        if len(rest) == 1 and only in self.args and only not in self.body:
            return path, query, next(iter(rest.values()))
        return path, query, rest


def _dig(bound: dict[str, Any], source: str) -> Any:
    argument, _, key = source.partition(".")
    value = bound.get(argument)
    if key:
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        raise InvalidSpec(source, "is required")
    return value


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow $refs, and take the object of an optional body (anyOf [model, null])."""
    for _ in range(16):
        if "$ref" in schema:
            target: Any = document
            for part in schema["$ref"].lstrip("#/").split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            schema = target
        elif "anyOf" in schema or "oneOf" in schema:
            choices = [c for c in schema.get("anyOf", schema.get("oneOf", []))
                       if c.get("type") != "null"]
            schema = choices[0] if choices else {}
        else:
            break
    return schema


def _body_properties(document: dict[str, Any], operation: dict[str, Any]) -> frozenset[str] | None:
    body = operation.get("requestBody")
    if not body:
        return None
    content = body.get("content", {})
    media = content.get("application/json")
    if media is None:
        return None  # a raw stream (an image upload), sent by the transfers module
    schema = _resolve(document, media.get("schema", {}))
    return frozenset(schema.get("properties", {}))


def catalog(document: dict[str, Any]) -> dict[str, Operation]:
    """operationId -> Operation for every operation of an OpenAPI document."""
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise KestrelError("the engine API's OpenAPI document has no paths")
    operations = {}
    for path, item in document["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            parameters = operation.get("parameters", []) + item.get("parameters", [])
            operations[operation["operationId"]] = Operation(
                operation_id=operation["operationId"],
                method=method.upper(),
                path=path,
                args=tuple(operation.get("x-kestrel-args", ())),
                path_from=dict(operation.get("x-kestrel-path-from", {})),
                long=bool(operation.get("x-kestrel-long", False)),
                returns=operation.get("x-kestrel-returns", "value"),
                query=frozenset(p["name"] for p in parameters if p.get("in") == "query"),
                body=_body_properties(document, operation),
                stream=operation.get("x-kestrel-stream"),
                path_param=operation.get("x-kestrel-path-param"),
                unwrap=operation.get("x-kestrel-unwrap"),
            )
    return operations
