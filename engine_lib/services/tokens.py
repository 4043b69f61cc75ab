"""API tokens users make for scripts and AWX. The token text is shown once, in the
outcome of its creation; the database keeps only its secret's sha256.

Anyone acting as an API user manages its own tokens; another user's take
``access.manage`` on the system. On the engine host (no API user) ``user`` is required.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select

from engine_lib.aaa import tokens
from engine_lib.aaa.roles import ROLES
from engine_lib.model import ApiToken, User, utcnow
from engine_lib.protocol.errors import InvalidSpec, PermissionDenied
from engine_lib.services import access, actor
from engine_lib.services.authn import expires_in_seconds
from engine_lib.services.common import as_utc, audit, flush_new, iso_utc, retry_on_conflict
from engine_lib.services.results import Outcome
from engine_lib.spec import name as check_name

__all__ = ["TokenService", "token_dict"]


def token_dict(token: ApiToken, user_name: str) -> dict:
    return {"id": token.id, "name": token.name, "user": user_name, "role": token.role,
            "expires": iso_utc(token.expires), "revoked": iso_utc(token.revoked),
            "created": iso_utc(token.created), "last_used": iso_utc(token.last_used)}


def _expiry(expires_in, expires, now: datetime) -> datetime | None:
    if expires_in is not None and expires is not None:
        raise InvalidSpec("expires", "give expires_in or expires, not both")
    if expires_in is not None:
        return now + timedelta(seconds=expires_in_seconds("expires_in", expires_in))
    if expires is None:
        return None
    try:
        moment = as_utc(datetime.fromisoformat(expires))
    except (TypeError, ValueError):
        raise InvalidSpec("expires", f"must be an ISO 8601 date and time, got {expires!r}") \
            from None
    if moment <= now:
        raise InvalidSpec("expires", f"must be in the future, got {expires!r}")
    return moment


def _within_own_token(role: str) -> str:
    """A narrowed token makes tokens no wider than itself: by default of its role,
    else of a role whose permissions its own role holds."""
    who = actor.current()
    if not who.token_role:
        return role
    if not role:
        return who.token_role
    wider = sorted(ROLES[role] - ROLES.get(who.token_role, frozenset()))
    if wider:
        raise PermissionDenied(who.name, wider[0], "system", "")
    return role


class TokenService:
    def __init__(self, engine):
        self.engine = engine

    def _user(self, session, user: str | None) -> User:
        """The token owner; checks the actor may manage that user's tokens."""
        who = actor.current()
        if user is None:
            if who.is_local:
                raise InvalidSpec("user", "is required on the engine host (no API user acts)")
            found = session.get(User, who.user_id)
        else:
            check_name("user", user)
            found = session.scalars(select(User).where(User.name == user)).first()
            if found is None or found.id != who.user_id:
                access.check(session, "access.manage", "system")
        if found is None:
            raise InvalidSpec("user", f"no user named {user!r}")
        return found

    @retry_on_conflict
    def create(self, *, name: str, user: str | None = None, role: str = "",
               expires_in: int | None = None, expires: str | None = None,
               check_mode: bool = False) -> Outcome:
        check_name("name", name)
        if role and role not in ROLES:
            raise InvalidSpec("role", f"must be empty or one of {', '.join(ROLES)}, "
                                      f"got {role!r}")
        now = utcnow()
        expiry = _expiry(expires_in, expires, now)
        role = _within_own_token(role)
        with self.engine.store.transaction(commit=not check_mode) as session:
            owner = self._user(session, user)
            existing = session.scalars(select(ApiToken).where(
                ApiToken.user_id == owner.id, ApiToken.name == name)).first()
            if existing is not None and existing.revoked is None and (
                    existing.expires is None or as_utc(existing.expires) > now):
                entity = token_dict(existing, owner.name)
                return Outcome(False, entity, {"before": entity, "after": entity})
            before = {} if existing is None else token_dict(existing, owner.name)
            if existing is not None:  # revoked or expired: the name makes a new token
                session.execute(delete(ApiToken).where(ApiToken.id == existing.id))
            token_id, secret, text = tokens.new_token()
            token = ApiToken(id=token_id, user_id=owner.id, name=name,
                             secret_sha256=tokens.secret_digest(secret), role=role,
                             expires=expiry, created=now)
            session.add(token)
            flush_new(session, f"token '{name}' of user '{owner.name}'")
            audit(session, "user", owner.name, f"token {name} created"
                  + (f" (role {role})" if role else ""))
            entity = token_dict(token, owner.name)
            # A predicted token is never stored: its text would never work.
            shown = entity if check_mode else {**entity, "token": text}
            return Outcome(True, shown, {"before": before, "after": entity})

    @retry_on_conflict
    def revoke(self, *, name: str, user: str | None = None,
               check_mode: bool = False) -> Outcome:
        check_name("name", name)
        with self.engine.store.transaction(commit=not check_mode) as session:
            owner = self._user(session, user)
            token = session.scalars(select(ApiToken).where(
                ApiToken.user_id == owner.id, ApiToken.name == name)).first()
            if token is None or token.revoked is not None:
                return Outcome(False, None if token is None else token_dict(token, owner.name),
                               None)
            before = token_dict(token, owner.name)
            token.revoked = utcnow()
            session.flush()
            audit(session, "user", owner.name, f"token {name} revoked")
            after = token_dict(token, owner.name)
            return Outcome(True, after, {"before": before, "after": after})

    def info(self, user: str | None = None) -> list[dict]:
        """Tokens (never their secrets) of ``user``; None: the actor's own, or every
        user's on the engine host."""
        with self.engine.store.transaction(commit=False) as session:
            query = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id)
            if user is not None or not actor.current().is_local:
                query = query.where(ApiToken.user_id == self._user(session, user).id)
            rows = session.execute(query.order_by(User.name, ApiToken.name)).all()
            return [token_dict(token, user_name) for token, user_name in rows]
