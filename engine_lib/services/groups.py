"""Groups of users: a role granted to a group holds for each of its members."""

from __future__ import annotations

from sqlalchemy import delete, select

from engine_lib.model import Group, GroupMember, User
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import access
from engine_lib.services.common import audit, find, retry_on_conflict
from engine_lib.services.results import Outcome
from engine_lib.spec import choice, text
from engine_lib.spec import name as check_name

__all__ = ["GroupService", "group_dict"]


def group_dict(session, group: Group) -> dict:
    users = session.scalars(select(User.name).join(GroupMember, GroupMember.user_id == User.id)
                            .where(GroupMember.group_id == group.id).order_by(User.name))
    return {"id": group.id, "name": group.name, "description": group.description,
            "users": list(users)}


def _user_ids(session, users: list[str]) -> dict[str, str]:
    if not isinstance(users, list):
        raise InvalidSpec("users", "must be a list of user names")
    for index, user in enumerate(users):
        check_name(f"users[{index}]", user)
    found = dict(session.execute(select(User.name, User.id).where(User.name.in_(users))).all())
    for index, user in enumerate(users):
        if user not in found:
            raise InvalidSpec(f"users[{index}]", f"no user named {user!r}")
    return found


class GroupService:
    def __init__(self, engine):
        self.engine = engine

    @retry_on_conflict
    def ensure(self, name: str, *, users: list[str] | None = None,
               description: str | None = None, state: str = "present",
               check_mode: bool = False) -> Outcome:
        check_name("name", name)
        if choice("state", state, ("present", "absent")) == "absent":
            return self.remove(name, check_mode=check_mode)
        if description is not None:
            text("description", description)
        with self.engine.store.transaction(commit=not check_mode) as session:
            members = None if users is None else _user_ids(session, users)
            group = find(session, Group, name)
            created = group is None
            if group is None:
                group = Group(name=name, description=description or "")
                session.add(group)
                session.flush()
            before = {} if created else group_dict(session, group)
            changed = ["group created"] if created else []
            if not created and description is not None and group.description != description:
                group.description = description
                changed.append("description")
            current = set(session.scalars(select(GroupMember.user_id)
                                          .where(GroupMember.group_id == group.id)))
            if members is not None and current != set(members.values()):
                session.execute(delete(GroupMember).where(GroupMember.group_id == group.id))
                session.add_all(GroupMember(group_id=group.id, user_id=user_id)
                                for user_id in set(members.values()))
                changed.append("users")
            if changed:
                session.flush()
                audit(session, "group", name, "group created" if created
                      else f"group updated: {', '.join(changed)}")
            after = group_dict(session, group)
            return Outcome(bool(changed), after, {"before": before, "after": after})

    @retry_on_conflict
    def remove(self, name: str, *, check_mode: bool = False) -> Outcome:
        with self.engine.store.transaction(commit=not check_mode) as session:
            group = find(session, Group, name)
            if group is None:
                return Outcome(False, None, None)
            before = group_dict(session, group)
            access.forget_principal(session, "group", group.id)
            session.execute(delete(GroupMember).where(GroupMember.group_id == group.id))
            session.delete(group)
            audit(session, "group", name, "group removed")
            return Outcome(True, None, {"before": before, "after": {}})

    def info(self, name: str | None = None) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            query = select(Group).order_by(Group.name)
            if name is not None:
                query = query.where(Group.name == name)
            return [group_dict(session, group) for group in session.scalars(query)]
