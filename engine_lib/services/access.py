"""Authorization: the one place that decides whether the current actor may do something.

A grant (model.Permission) gives a role to a user or a group on an object and holds
below it: the system covers everything, a cluster its hosts, VMs and templates. A
token narrowed to a role allows only what both its user's grants and that role allow.
The engine host's own callers (actor.is_local) may do everything.
"""

from __future__ import annotations

import functools

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    delete,
    false,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine_lib.aaa.roles import OBJECT_TYPES, ROLES
from engine_lib.model import Cluster, GroupMember, Host, Permission, Template, Vm
from engine_lib.protocol.errors import InvalidSpec, PermissionDenied
from engine_lib.services import actor as actors

__all__ = ["AccessService", "check", "forget_object", "grant", "visible"]

ENTITIES = {"cluster": Cluster, "host": Host, "vm": Vm, "template": Template}
PRINCIPAL_TYPES = ("user", "group")


def _roles_with(permission: str) -> list[str]:
    return [role for role, permissions in ROLES.items() if permission in permissions]


def _grants_of(user_id, permission: str) -> ColumnElement[bool]:
    """The actor's grants (its own and its groups') of a role holding ``permission``."""
    groups = select(GroupMember.group_id).where(GroupMember.user_id == user_id)
    return and_(
        or_(and_(Permission.principal_type == "user", Permission.principal_id == user_id),
            and_(Permission.principal_type == "group", Permission.principal_id.in_(groups))),
        Permission.role.in_(_roles_with(permission)))


def _object_and_ancestors(object_type: str):
    """(object_type, object_id) of the object named :object_name, its cluster and the
    system, found in the query itself; a missing object leaves the system alone.
    Template versions share a name: a grant on any of them covers the template."""
    rows = [select(literal("system").label("type"), literal("").label("id"))]
    if object_type != "system":
        entity = ENTITIES[object_type]
        same_name = entity.name == bindparam("object_name")
        rows.append(select(literal(object_type), entity.id).where(same_name))
        if entity is not Cluster:
            rows.append(select(literal("cluster"), entity.cluster_id).where(same_name))
    return union_all(*rows).subquery()


@functools.cache
def _grant_query(permission: str, object_type: str):
    """One grant of ``permission`` to :user_id on the object or above it. Driven by the
    few objects in question (the object_id index), not by every grant of a user who may
    own thousands of VMs. Built once per (permission, type): SQLAlchemy then reuses its
    compiled form without recomputing its cache key."""
    objects = _object_and_ancestors(object_type)
    return (select(Permission.id).select_from(objects)
            .join(Permission, and_(Permission.object_type == objects.c.type,
                                   Permission.object_id == objects.c.id))
            .where(_grants_of(bindparam("user_id"), permission)).limit(1))


def _token_allows(who: actors.Actor, permission: str) -> bool:
    return not who.token_role or permission in ROLES.get(who.token_role, ())


def check(session: Session, permission: str, object_type: str, object_name: str = "") -> None:
    """Raise PermissionDenied unless the current actor holds ``permission`` on the object.

    Callers check before looking the object up, so a missing object is decided on the
    system alone: without read on the system a caller cannot tell missing from hidden.
    """
    if object_type not in OBJECT_TYPES:
        raise InvalidSpec("object_type", f"must be one of {', '.join(OBJECT_TYPES)}, "
                                         f"got {object_type!r}")
    who = actors.current()
    if who.is_local:
        return
    assert who.user_id is not None
    if _token_allows(who, permission):
        query = _grant_query(permission, object_type)
        if session.execute(query, {"user_id": who.user_id,
                                   "object_name": object_name}).first() is not None:
            return
    raise PermissionDenied(who.name, permission, object_type, object_name)


def visible(session: Session, object_type: str) -> ColumnElement[bool] | None:
    """A WHERE clause on the entity's table selecting what the actor may read; None
    when it may read everything. Subqueries, not id lists, so a user owning
    thousands of VMs costs the database one semi-join."""
    entity = ENTITIES[object_type]
    who = actors.current()
    if who.is_local:
        return None
    assert who.user_id is not None
    if not _token_allows(who, "read"):
        return false()
    readable = _grants_of(who.user_id, "read")
    if session.execute(select(Permission.id).where(readable, Permission.object_type == "system")
                       .limit(1)).first() is not None:
        return None

    def granted_on(kind: str):
        return select(Permission.object_id).where(readable, Permission.object_type == kind)

    if entity is Cluster:
        return Cluster.id.in_(granted_on("cluster"))
    return or_(entity.cluster_id.in_(granted_on("cluster")),
               entity.id.in_(granted_on(object_type)))


def grant(session: Session, role: str, principal_type: str, principal_id: str,
          object_type: str, object_id: str) -> bool:
    """Give ``role`` to the principal on the object; False if it already had it."""
    if role not in ROLES:
        raise InvalidSpec("role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    if principal_type not in PRINCIPAL_TYPES:
        raise InvalidSpec("principal_type", f"must be user or group, got {principal_type!r}")
    if object_type not in OBJECT_TYPES:
        raise InvalidSpec("object_type", f"must be one of {', '.join(OBJECT_TYPES)}, "
                                         f"got {object_type!r}")
    if object_type == "system":
        object_id = ""
    exists = session.execute(select(Permission.id).where(
        Permission.role == role, Permission.principal_type == principal_type,
        Permission.principal_id == principal_id, Permission.object_type == object_type,
        Permission.object_id == object_id)).first()
    if exists is not None:
        return False
    try:
        # A savepoint: a concurrent identical grant (two playbooks at once) wins the
        # unique index and this one is simply not needed, the caller's work going on.
        with session.begin_nested():
            session.add(Permission(role=role, principal_type=principal_type,
                                   principal_id=principal_id, object_type=object_type,
                                   object_id=object_id))
    except IntegrityError:
        return False
    return True


def object_id(session: Session, object_type: str, object_name: str) -> str | None:
    """The row id grants on the object use ('' for the system), None if it does not
    exist. A template's grants use its first version's id and cover every version."""
    if object_type == "system":
        return ""
    entity = ENTITIES[object_type]
    query = select(entity.id).where(entity.name == object_name)
    if entity is Template:
        query = query.order_by(Template.version_number)
    return session.scalars(query.limit(1)).first()


def object_names(session: Session, object_type: str, ids: set[str]) -> dict[str, str]:
    """id -> name of the objects of one type ('' -> '' for the system)."""
    if object_type == "system":
        return {"": ""}
    entity = ENTITIES[object_type]
    return dict(session.execute(select(entity.id, entity.name).where(entity.id.in_(ids))).all())


def forget_object(session: Session, object_type: str, object_id: str) -> None:
    """Drop the grants on a removed object, so a later one of the same name starts bare."""
    session.execute(delete(Permission).where(Permission.object_type == object_type,
                                             Permission.object_id == object_id))


def forget_template_versions(session: Session, name: str, removed: list[str]) -> None:
    """Grants on removed template versions pass to the first version left, if any."""
    left = object_id(session, "template", name)
    for row in list(session.scalars(select(Permission).where(Permission.object_type == "template",
                                                             Permission.object_id.in_(removed)))):
        if left is not None:
            grant(session, row.role, row.principal_type, row.principal_id, "template", left)
        session.delete(row)


def forget_principal(session: Session, principal_type: str, principal_id: str) -> None:
    """Drop the grants of a removed user or group."""
    session.execute(delete(Permission).where(Permission.principal_type == principal_type,
                                             Permission.principal_id == principal_id))


class AccessService:
    """engine.access: the check for callers outside a transaction (the API's routes)."""

    def __init__(self, engine):
        self.engine = engine

    def check(self, permission: str, object_type: str, object_name: str = "") -> None:
        if actors.current().is_local:
            return
        with self.engine.store.transaction(commit=False) as session:
            check(session, permission, object_type, object_name)
