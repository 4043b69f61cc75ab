"""Local users of the engine API. Their passwords are argon2id hashes and appear in no
entity, diff, event or log: a change shows as the field name ``password`` only."""

from __future__ import annotations

from sqlalchemy import delete, select

from engine_lib.aaa import passwords
from engine_lib.model import Group, GroupMember, User
from engine_lib.protocol.errors import InvalidSpec
from engine_lib.services import access
from engine_lib.services.common import as_utc, audit, find, retry_on_conflict
from engine_lib.services.results import Outcome
from engine_lib.spec import boolean, choice, text
from engine_lib.spec import name as check_name

__all__ = ["MIN_PASSWORD", "UserService", "check_password", "user_dict"]

MIN_PASSWORD = 12
MAX_PASSWORD = 1024
STATES = ("present", "absent")


def check_password(field: str, value) -> str:
    if not isinstance(value, str):
        raise InvalidSpec(field, "must be a string")
    if not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise InvalidSpec(field, f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")
    return value


def _email(value) -> str:
    value = text("email", value, 254)
    if value and ("@" not in value or any(c.isspace() for c in value)):
        raise InvalidSpec("email", f"must be an address like name@example.com (got {value!r})")
    return value


def user_dict(session, user: User) -> dict:
    groups = session.scalars(select(Group.name).join(GroupMember, GroupMember.group_id == Group.id)
                             .where(GroupMember.user_id == user.id).order_by(Group.name))
    return {"id": user.id, "name": user.name, "description": user.description,
            "email": user.email, "enabled": user.enabled, "created": as_utc(user.created).isoformat(),
            "groups": list(groups)}


class UserService:
    def __init__(self, engine):
        self.engine = engine

    @retry_on_conflict
    def ensure(self, name: str, *, password: str | None = None,
               update_password: str = "on_create", description: str | None = None,
               email: str | None = None, enabled: bool | None = None,
               state: str = "present", check_mode: bool = False) -> Outcome:
        check_name("name", name)
        if choice("state", state, STATES) == "absent":
            return self.remove(name, check_mode=check_mode)
        choice("update_password", update_password, ("always", "on_create"))
        if password is not None:
            check_password("password", password)
        wanted = {"description": None if description is None else text("description", description),
                  "email": None if email is None else _email(email),
                  "enabled": None if enabled is None else boolean("enabled", enabled)}
        with self.engine.store.transaction(commit=not check_mode) as session:
            user = find(session, User, name)
            if user is None:
                user = User(name=name, password_hash="" if password is None
                            else passwords.hash_password(password))
                for key, value in wanted.items():
                    if value is not None:
                        setattr(user, key, value)
                session.add(user)
                session.flush()
                audit(session, "user", name, "user created")
                after = user_dict(session, user)
                return Outcome(True, after, {"before": {}, "after": after})
            before = user_dict(session, user)
            changed = [key for key, value in wanted.items()
                       if value is not None and getattr(user, key) != value]
            for key in changed:
                setattr(user, key, wanted[key])
            if (password is not None and update_password == "always"
                    and not passwords.verify_password(user.password_hash, password)):
                user.password_hash = passwords.hash_password(password)
                changed.append("password")
            if changed:
                session.flush()
                audit(session, "user", name, f"user updated: {', '.join(changed)}")
            after = user_dict(session, user)
            diff = {"before": before, "after": after}
            if "password" in changed:  # the field, never the value
                diff = {"before": {**before, "password": "(old)"},
                        "after": {**after, "password": "(new)"}}
            return Outcome(bool(changed), after, diff)

    @retry_on_conflict
    def remove(self, name: str, *, check_mode: bool = False) -> Outcome:
        with self.engine.store.transaction(commit=not check_mode) as session:
            user = find(session, User, name)
            if user is None:
                return Outcome(False, None, None)
            before = user_dict(session, user)
            access.forget_principal(session, "user", user.id)
            # Explicit, not only ON DELETE CASCADE: the ORM deletes the row itself.
            session.execute(delete(GroupMember).where(GroupMember.user_id == user.id))
            session.delete(user)
            audit(session, "user", name, "user removed")
            return Outcome(True, None, {"before": before, "after": {}})

    def info(self, name: str | None = None) -> list[dict]:
        with self.engine.store.transaction(commit=False) as session:
            query = select(User).order_by(User.name)
            if name is not None:
                query = query.where(User.name == name)
            return [user_dict(session, user) for user in session.scalars(query)]
