"""Authentication: a username and password for a login token, and a token for an actor."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from engine_lib.aaa import passwords, tokens
from engine_lib.model import ApiToken, User, utcnow
from engine_lib.protocol.errors import InvalidSpec, Unauthenticated
from engine_lib.services.actor import Actor, acting_as
from engine_lib.services.common import as_utc, audit
from engine_lib.services.login_throttle import LoginThrottle

__all__ = ["MAX_EXPIRES_IN", "Authenticator"]

_REFUSED = "invalid username or password"
_BAD_TOKEN = "invalid, expired or revoked token"
LOGIN_PREFIX = "login-"
MAX_EXPIRES_IN = 30 * 24 * 3600
# last_used is a hint for admins, not an audit trail: one write a minute per token.
LAST_USED_EVERY = timedelta(minutes=1)


def expires_in_seconds(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 60 <= value <= MAX_EXPIRES_IN:
        raise InvalidSpec(field, f"must be whole seconds from 60 to {MAX_EXPIRES_IN}, "
                                 f"got {value!r}")
    return value


class Authenticator:
    def __init__(self, engine, *, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = utcnow):
        self.engine = engine
        self.throttle = LoginThrottle(clock)
        self._now = now

    def login(self, username: str, password: str, *, client: str,
              expires_in: int = 3600) -> dict:
        for field, value in (("username", username), ("password", password)):
            if not isinstance(value, str):
                raise InvalidSpec(field, "must be a string")
        expires_in = expires_in_seconds("expires_in", expires_in)
        self.throttle.check(username, client)
        with self.engine.store.transaction(commit=False) as session:
            user = session.execute(select(User.id, User.name, User.password_hash)
                                   .where(User.name == username, User.enabled)).first()
        # The same argon2 work whether or not the user exists or may log in.
        hashed = user.password_hash if user is not None and user.password_hash else ""
        matches = passwords.verify_password(hashed or passwords.DUMMY_HASH, password)
        if user is None or not hashed or not matches:
            self.throttle.failed(username, client)
            raise Unauthenticated(_REFUSED)
        self.throttle.succeeded(username)
        token_id, secret, text = tokens.new_token()
        now = self._now()
        expires = now + timedelta(seconds=expires_in)
        with self.engine.store.transaction() as session, \
                acting_as(Actor(user.name, user.id, token_id)):
            session.execute(delete(ApiToken).where(
                ApiToken.user_id == user.id, ApiToken.name.startswith(LOGIN_PREFIX),
                ApiToken.expires < now))
            session.add(ApiToken(id=token_id, user_id=user.id,
                                 name=f"{LOGIN_PREFIX}{secrets.token_hex(4)}",
                                 secret_sha256=tokens.secret_digest(secret), role="",
                                 expires=expires, created=now))
            audit(session, "user", user.name, f"logged in from {client}")
        return {"token": text, "id": token_id, "expires": expires.isoformat(), "user": user.name}

    def actor_for_token(self, token_text: str) -> Actor:
        try:
            token_id, secret = tokens.parse(token_text)
        except ValueError:
            raise Unauthenticated(_BAD_TOKEN) from None
        now = self._now()
        with self.engine.store.transaction() as session:
            row = session.execute(select(ApiToken, User).join(User, User.id == ApiToken.user_id)
                                  .where(ApiToken.id == token_id)).first()
            if row is None:
                tokens.secret_digest(secret)  # the same work as for a real id
                raise Unauthenticated(_BAD_TOKEN)
            token, user = row
            if not (hmac.compare_digest(token.secret_sha256, tokens.secret_digest(secret))
                    and token.revoked is None and user.enabled
                    and (token.expires is None or as_utc(token.expires) > now)):
                raise Unauthenticated(_BAD_TOKEN)
            if token.last_used is None or now - as_utc(token.last_used) >= LAST_USED_EVERY:
                session.execute(update(ApiToken).where(ApiToken.id == token.id)
                                .values(last_used=now))
            return Actor(user.name, user.id, token.id, token.role)
