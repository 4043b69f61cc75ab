"""Logins, tokens and slowing down guessed passwords (engine_lib.services.authn)."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from engine_lib.aaa import passwords, tokens
from engine_lib.model import ApiToken, User
from engine_lib.protocol.errors import InvalidSpec, TooManyAttempts, Unauthenticated
from engine_lib.services.authn import Authenticator

PASSWORD = "twelve chars or more"


class Clock:
    """Both clocks the authenticator reads, moved by the test."""

    def __init__(self):
        self.monotonic = 1000.0
        self.wall = datetime(2026, 1, 1, tzinfo=UTC)

    def advance(self, seconds):
        self.monotonic += seconds
        self.wall += timedelta(seconds=seconds)


pytestmark = pytest.mark.usefixtures("cheap_argon2")


# Throttling is process memory: one database is enough for its tests.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def authn(engine, clock):
    with engine.store.transaction() as session:
        session.add(User(name="alice", password_hash=passwords.hash_password(PASSWORD)))
        session.add(User(name="tokensonly"))
    return Authenticator(engine, clock=lambda: clock.monotonic, now=lambda: clock.wall)


def _token_row(engine, token_id):
    with engine.store.transaction() as session:  # read with nothing to write, so committed
        row = session.get(ApiToken, token_id)
        session.expunge_all()
        return row


def test_login_gives_a_token_that_names_its_user(engine, authn, clock):
    login = authn.login("alice", PASSWORD, client="192.0.2.1", expires_in=600)
    assert login["user"] == "alice" and login["token"].startswith(f"kst_{login['id']}_")
    assert login["expires"] == (clock.wall + timedelta(seconds=600)).isoformat()
    actor = authn.actor_for_token(login["token"])
    assert (actor.name, actor.token_id, actor.token_role) == ("alice", login["id"], "")
    row = _token_row(engine, login["id"])
    assert row.name.startswith("login-") and login["token"].split("_")[-1] not in row.secret_sha256
    events = engine.events.info(entity_type="user", entity_name="alice")
    assert events[-1]["user"] == "alice" and "192.0.2.1" in events[-1]["message"]
    assert PASSWORD not in str(events)


@pytest.mark.parametrize("username,password", [
    ("alice", "wrong password!!"), ("nobody", PASSWORD), ("tokensonly", ""),
])
def test_a_wrong_login_says_nothing_about_which_part_was_wrong(authn, username, password):
    with pytest.raises(Unauthenticated) as refused:
        authn.login(username, password, client="192.0.2.1")
    assert refused.value.message == "invalid username or password"


def test_a_disabled_user_cannot_log_in_and_its_tokens_stop(engine, authn):
    token = authn.login("alice", PASSWORD, client="c")["token"]
    with engine.store.transaction() as session:
        session.execute(update(User).where(User.name == "alice").values(enabled=False))
    with pytest.raises(Unauthenticated):
        authn.login("alice", PASSWORD, client="c")
    with pytest.raises(Unauthenticated):
        authn.actor_for_token(token)


def test_expired_revoked_and_forged_tokens_are_refused(engine, authn, clock):
    expiring = authn.login("alice", PASSWORD, client="c", expires_in=60)
    revoked = authn.login("alice", PASSWORD, client="c")
    with engine.store.transaction() as session:
        session.execute(update(ApiToken).where(ApiToken.id == revoked["id"])
                        .values(revoked=clock.wall))
    token_id, secret = tokens.parse(revoked["token"])
    other_id = tokens.new_token()[0]
    forged = [f"kst_{token_id}_{'A' * 43}", f"kst_{other_id}_{secret}", "kst_garbage", ""]
    clock.advance(61)
    for text in [expiring["token"], revoked["token"], *forged]:
        with pytest.raises(Unauthenticated) as refused:
            authn.actor_for_token(text)
        assert refused.value.message == "invalid, expired or revoked token"


def test_last_used_is_written_at_most_once_a_minute(engine, authn, clock):
    login = authn.login("alice", PASSWORD, client="c")
    authn.actor_for_token(login["token"])
    first = _token_row(engine, login["id"]).last_used
    clock.advance(30)
    authn.actor_for_token(login["token"])
    assert _token_row(engine, login["id"]).last_used == first
    clock.advance(31)
    authn.actor_for_token(login["token"])
    assert _token_row(engine, login["id"]).last_used != first


def test_a_login_purges_its_users_expired_login_tokens(engine, authn, clock):
    old = authn.login("alice", PASSWORD, client="c", expires_in=60)
    clock.advance(120)
    authn.login("alice", PASSWORD, client="c")
    assert _token_row(engine, old["id"]) is None


def _fail(authn, username="alice", client="192.0.2.1"):
    with pytest.raises(Unauthenticated):
        authn.login(username, "not the password", client=client)


@sqlite_only
def test_three_failures_hold_back_even_the_right_password_doubling_the_wait(authn, clock):
    for _ in range(3):
        _fail(authn)
    with pytest.raises(TooManyAttempts) as held:
        authn.login("alice", PASSWORD, client="192.0.2.1")
    assert held.value.details == {"retry_after": 1} and held.value.http_status == 429
    clock.advance(1)
    _fail(authn)
    with pytest.raises(TooManyAttempts) as held:
        authn.login("alice", PASSWORD, client="192.0.2.1")
    assert held.value.retry_after == 2
    for _ in range(12):
        clock.advance(held.value.retry_after)
        _fail(authn)
        with pytest.raises(TooManyAttempts) as held:
            authn.login("alice", PASSWORD, client="192.0.2.1")
    assert held.value.retry_after == 300  # the ceiling
    clock.advance(300)
    assert authn.login("alice", PASSWORD, client="192.0.2.1")["user"] == "alice"


@sqlite_only
def test_failures_are_counted_per_username_and_per_client(authn, clock):
    for number in range(3):  # one address guessing several names
        _fail(authn, username=f"guess{number}", client="198.51.100.7")
    with pytest.raises(TooManyAttempts):
        authn.login("alice", PASSWORD, client="198.51.100.7")
    for number in range(3):  # one name guessed from several addresses
        _fail(authn, client=f"203.0.113.{number}")
    with pytest.raises(TooManyAttempts):
        authn.login("alice", PASSWORD, client="192.0.2.99")


@sqlite_only
def test_failures_older_than_the_window_are_forgotten(authn, clock):
    _fail(authn)
    _fail(authn)
    clock.advance(15 * 60)
    _fail(authn)
    assert authn.login("alice", PASSWORD, client="192.0.2.1")["user"] == "alice"


@sqlite_only
def test_unknown_users_cost_the_same_argon2_work(authn, monkeypatch):
    verified = []
    real = passwords.verify_password
    monkeypatch.setattr(passwords, "verify_password",
                        lambda hashed, password: verified.append(hashed) or real(hashed, password))
    _fail(authn, username="nobody", client="a")
    _fail(authn, username="tokensonly", client="b")
    assert verified == [passwords.DUMMY_HASH, passwords.DUMMY_HASH]


@sqlite_only
@pytest.mark.parametrize("expires_in", [0, 59, 10**9, "3600", True])
def test_bad_expires_in_is_named(authn, expires_in):
    with pytest.raises(InvalidSpec) as bad:
        authn.login("alice", PASSWORD, client="c", expires_in=expires_in)
    assert bad.value.field == "expires_in"


def test_the_facade_has_an_authenticator(engine):
    assert isinstance(engine.authn, Authenticator)
    with engine.store.transaction(commit=False) as session:
        assert session.scalars(select(ApiToken)).all() == []
