"""The audit log names who acted, and reads back by who acted."""

from engine_lib.services import actor
from engine_lib.services.common import audit

ALICE = actor.Actor("alice", user_id="u-alice", token_id="tok-a")


def _record(engine, message):
    with engine.store.transaction() as session:
        audit(session, "vm", "vm1", message)


def test_events_name_the_user_and_token_and_filter_by_user(engine):
    _record(engine, "by the engine host's caller")
    with actor.acting_as(ALICE):
        _record(engine, "by alice")
    with actor.acting_as(actor.ENGINE_LOOP):
        _record(engine, "by the loop")

    everything = engine.events.info()
    assert [(e["user"], e["token_id"]) for e in everything] == [
        (actor.current().name, ""), ("alice", "tok-a"), ("engine", "")]
    assert actor.current().name.startswith("local:")

    alice = engine.events.info(user="alice")
    assert [(e["message"], e["token_id"]) for e in alice] == [("by alice", "tok-a")]
    assert [e["message"] for e in engine.events.info(user="engine")] == ["by the loop"]
    # Exact match: a LIKE pattern is a name like any other.
    assert engine.events.info(user="%") == []
    assert engine.events.info(user="ali_e") == []
