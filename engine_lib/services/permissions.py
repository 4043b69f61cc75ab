"""Grants of roles to users and groups on objects, as ovirt.ovirt's ovirt_permission."""

from __future__ import annotations

from sqlalchemy import select

from engine_lib.aaa.roles import OBJECT_TYPES, ROLES
from engine_lib.model import Group, Permission, User
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import access
from engine_lib.services.common import audit
from engine_lib.services.results import Outcome
from engine_lib.spec import choice
from engine_lib.spec import name as check_name

__all__ = ["PermissionService"]

PRINCIPALS = {"user": User, "group": Group}


def _principal(user: str | None, group: str | None) -> tuple[str, str]:
    if (user is None) == (group is None):
        raise InvalidSpec("user", "give exactly one of user and group")
    kind, name = ("user", user) if user is not None else ("group", group)
    return kind, check_name(kind, name)


def _object(object_type: str, object_name: str) -> tuple[str, str]:
    choice("object_type", object_type, OBJECT_TYPES)
    if object_type == "system":
        if object_name:
            raise InvalidSpec("object_name", "must be empty for the system")
        return object_type, ""
    return object_type, check_name("object_name", object_name)


class PermissionService:
    def __init__(self, engine):
        self.engine = engine

    def ensure(self, *, role: str, user: str | None = None, group: str | None = None,
               object_type: str = "system", object_name: str = "", state: str = "present",
               check_mode: bool = False) -> Outcome:
        choice("role", role, tuple(ROLES))
        kind, principal_name = _principal(user, group)
        object_type, object_name = _object(object_type, object_name)
        choice("state", state, ("present", "absent"))
        with self.engine.store.transaction(commit=not check_mode) as session:
            entity = PRINCIPALS[kind]
            principal_id = session.scalars(select(entity.id)
                                           .where(entity.name == principal_name)).first()
            if principal_id is None:
                raise InvalidSpec(kind, f"no {kind} named {principal_name!r}")
            target = access.object_id(session, object_type, object_name)
            if target is None:
                raise InvalidSpec("object_name", f"no {object_type} named {object_name!r}")
            row = session.scalars(select(Permission).where(
                Permission.role == role, Permission.principal_type == kind,
                Permission.principal_id == principal_id, Permission.object_type == object_type,
                Permission.object_id == target)).first()
            where = "the system" if object_type == "system" else f"{object_type} {object_name}"
            if state == "absent":
                if row is None:
                    return Outcome(False, None, None)
                before = self._dict(row, kind, principal_name, object_name)
                session.delete(row)
                audit(session, kind, principal_name, f"role {role} on {where} revoked")
                return Outcome(True, None, {"before": before, "after": {}})
            if row is not None:
                entity_dict = self._dict(row, kind, principal_name, object_name)
                return Outcome(False, entity_dict, {"before": entity_dict, "after": entity_dict})
            access.grant(session, role, kind, principal_id, object_type, target)
            row = session.scalars(select(Permission).where(
                Permission.role == role, Permission.principal_type == kind,
                Permission.principal_id == principal_id, Permission.object_type == object_type,
                Permission.object_id == target)).one()
            audit(session, kind, principal_name, f"role {role} on {where} granted")
            after = self._dict(row, kind, principal_name, object_name)
            return Outcome(True, after, {"before": {}, "after": after})

    @staticmethod
    def _dict(row: Permission, kind: str, principal_name: str, object_name: str) -> dict:
        return {"id": row.id, "role": row.role, kind: principal_name,
                "object_type": row.object_type, "object_name": object_name}

    def info(self, user: str | None = None, group: str | None = None,
             object_type: str | None = None, object_name: str | None = None) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            query = select(Permission)
            for kind, name in (("user", user), ("group", group)):
                if name is not None:
                    entity = PRINCIPALS[kind]
                    query = query.where(Permission.principal_type == kind,
                                        Permission.principal_id.in_(
                                            select(entity.id).where(entity.name == name)))
            if object_type is not None:
                choice("object_type", object_type, OBJECT_TYPES)
                query = query.where(Permission.object_type == object_type)
                if object_name is not None and object_type != "system":
                    entity = access.ENTITIES[object_type]
                    query = query.where(Permission.object_id.in_(
                        select(entity.id).where(entity.name == object_name)))
            rows = list(session.scalars(query))
            principals = {kind: dict(session.execute(select(entity.id, entity.name)).all())
                          for kind, entity in PRINCIPALS.items()}
            objects = {kind: access.object_names(session, kind,
                                                 {r.object_id for r in rows if r.object_type == kind})
                       for kind in OBJECT_TYPES}
            found = [self._dict(row, row.principal_type,
                                principals[row.principal_type].get(row.principal_id, ""),
                                objects[row.object_type].get(row.object_id, ""))
                     for row in rows]
            return sorted(found, key=lambda p: (p["object_type"], p["object_name"], p["role"],
                                                p.get("user", ""), p.get("group", "")))
