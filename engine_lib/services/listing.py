"""Paged, filtered lists done in SQL: one page of rows and the total, never the whole table.

What the engine API's list routes serve (``{"items", "total", "offset", "limit"}``, offset
and limit as oVirt's search paging): the services build a query of their entity with its
own filters and hand it here with the common ones (name, status, what the caller may see).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import Session

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import access

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# PostgreSQL takes a bigint; anything near it is a mistake, not a page.
MAX_OFFSET = 2**31 - 1
MAX_PATTERN = 128
# Control characters (NUL is refused by PostgreSQL) and lone surrogates (not encodable).
_UNSAYABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_LIKE_ESCAPE = "\\"


def whole(field: str, value: Any, low: int = 0, high: int = MAX_OFFSET) -> int:
    """An integer filter or bound, checked: a clear error naming the field, never a 5xx
    from a number the database cannot hold."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(field, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidSpec(field, f"must be between {low} and {high} (got {value})")
    return value


def bounds(offset: Any, limit: Any) -> tuple[int, int]:
    return whole("offset", offset), whole("limit", limit, 1, MAX_LIMIT)


def filter_text(field: str, value: Any, max_len: int = MAX_PATTERN) -> str:
    """A filter value as given (matched exactly or as a glob): a string the database can
    hold, of bounded length."""
    if not isinstance(value, str):
        raise InvalidSpec(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidSpec(field, f"is longer than {max_len} characters")
    bad = _UNSAYABLE.search(value)
    if bad:
        raise InvalidSpec(field, f"contains the character U+{ord(bad.group()):04X}")
    return value


def readable(session: Session, object_type: str,
             also: ColumnElement | None = None) -> ColumnElement | None:
    """The rows of ``object_type`` the current actor may read (services.access), narrowed
    by ``also`` where a caller passes a clause of its own; None: every row."""
    clauses = [c for c in (access.visible(session, object_type), also) if c is not None]
    return and_(*clauses) if clauses else None


def named(id_column, entity, field: str, value: Any) -> ColumnElement:
    """Rows whose ``id_column`` refers to the ``entity`` named ``value`` (a list filter such
    as a VM's cluster): no match is an empty page, never a NotFound that would tell a
    caller without read access what exists."""
    return id_column.in_(select(entity.id).where(entity.name == filter_text(field, value, 64)))


def name_matches(session: Session, column, pattern: str, field: str = "name") -> ColumnElement:
    """``column`` equal to ``pattern``, or matching it as a glob where ``*`` is any run of
    characters; everything else in it is literal, and case counts (as names' equality).

    PostgreSQL: LIKE with ``%``, ``_`` and the escape character escaped. SQLite's LIKE
    ignores ASCII case, so there GLOB, whose own wildcards ``?`` and ``[`` are escaped as
    one-character sets. Both use an index on the column for a literal prefix.
    """
    pattern = filter_text(field, pattern)
    if "*" not in pattern:
        return column == pattern
    parts = pattern.split("*")
    if session.get_bind().dialect.name == "sqlite":
        literal = [re.sub(r"[?\[]", lambda m: f"[{m.group()}]", part) for part in parts]
        return column.op("GLOB")("*".join(literal))
    literal = [re.sub(r"[%_\\]", lambda m: _LIKE_ESCAPE + m.group(), part) for part in parts]
    return column.like("%".join(literal), escape=_LIKE_ESCAPE)


def page(session: Session, query: Select, *, to_dict: Callable[[Any], dict], offset: int,
         limit: int, name: str | None = None, name_column=None, status: str | None = None,
         status_column=None, visible: ColumnElement | None = None) -> dict:
    """One page of ``query`` (a select of one entity, ordered by a unique key so pages
    neither skip nor repeat rows) as dicts, and how many rows match in all.

    ``name`` needs ``name_column``, ``status`` needs ``status_column``; ``visible`` (the
    rows the caller may read, services.access) is ANDed in. Loader options (selectinload)
    on ``query`` apply to the page's rows only.
    """
    offset, limit = bounds(offset, limit)
    if name is not None:
        if name_column is None:
            raise InvalidSpec("name", "this list cannot be filtered by name")
        query = query.where(name_matches(session, name_column, name))
    if status is not None:
        if status_column is None:
            raise InvalidSpec("status", "this list cannot be filtered by status")
        query = query.where(status_column == filter_text("status", status, 64))
    if visible is not None:
        query = query.where(visible)
    total = session.execute(
        select(func.count()).select_from(query.order_by(None).subquery())).scalar_one()
    rows = session.scalars(query.offset(offset).limit(limit)).all() if offset < total else []
    return {"items": [to_dict(row) for row in rows], "total": total, "offset": offset,
            "limit": limit}
