"""Users, groups, permissions and tokens as services (engine_lib.services.users,
groups, permissions, tokens): idempotent, check mode, no secret anywhere."""

import json

import pytest

from engine_lib.protocol.errors import InvalidSpec, PermissionDenied, Unauthenticated
from engine_lib.services.actor import acting_as

PASSWORD = "a long enough password"


pytestmark = pytest.mark.usefixtures("cheap_argon2")


def test_a_user_in_three_beats_with_no_password_anywhere(engine):
    assert engine.users.ensure("ann", password=PASSWORD, email="ann@example.com",
                               check_mode=True).changed
    assert engine.users.info() == []
    created = engine.users.ensure("ann", password=PASSWORD, email="ann@example.com")
    assert created.changed and created.entity["email"] == "ann@example.com"
    again = engine.users.ensure("ann", password="another password", email="ann@example.com")
    assert not again.changed  # update_password=on_create
    rotated = engine.users.ensure("ann", password="another password", update_password="always")
    assert rotated.changed and rotated.diff["after"]["password"] == "(new)"
    assert not engine.users.ensure("ann", password="another password",
                                   update_password="always").changed
    assert engine.authn.login("ann", "another password", client="c")["user"] == "ann"
    shown = json.dumps([created.entity, created.diff, rotated.diff, engine.users.info(),
                        engine.events.info(entity_type="user")])
    assert PASSWORD not in shown and "another password" not in shown and "argon2" not in shown
    assert engine.users.remove("ann").changed and engine.users.info() == []


@pytest.mark.parametrize("options,field", [
    ({"password": "short"}, "password"), ({"password": 12345678901234}, "password"),
    ({"email": "no-at-sign"}, "email"), ({"enabled": "yes"}, "enabled"),
    ({"update_password": "sometimes"}, "update_password"), ({"state": "gone"}, "state"),
])
def test_bad_user_options_are_named(engine, options, field):
    with pytest.raises(InvalidSpec) as bad:
        engine.users.ensure("bob", **options)
    assert bad.value.field == field


def test_disabling_a_user_stops_its_tokens(engine):
    engine.users.ensure("carl", password=PASSWORD)
    token = engine.tokens.create(name="ci", user="carl").entity["token"]
    assert engine.authn.actor_for_token(token).name == "carl"
    assert engine.users.ensure("carl", enabled=False).changed
    with pytest.raises(Unauthenticated):
        engine.authn.actor_for_token(token)


def test_groups_replace_their_members_and_give_their_roles(engine, cluster):
    for name in ("dan", "eve"):
        engine.users.ensure(name)
    assert engine.groups.ensure("ops", users=["dan"]).changed
    assert not engine.groups.ensure("ops", users=["dan"]).changed
    assert engine.groups.ensure("ops", users=["eve"]).entity["users"] == ["eve"]
    assert engine.users.info("eve")[0]["groups"] == ["ops"]
    with pytest.raises(InvalidSpec) as bad:
        engine.groups.ensure("ops", users=["eve", "nobody"])
    assert bad.value.field == "users[1]"
    engine.permissions.ensure(role="ClusterAdmin", group="ops", object_type="cluster",
                              object_name=cluster)
    eve = engine.authn.actor_for_token(engine.tokens.create(name="t", user="eve").entity["token"])
    with acting_as(eve):
        engine.access.check("vm.create", "cluster", cluster)
    assert engine.groups.remove("ops").changed
    assert engine.permissions.info(group="ops") == []
    with acting_as(eve), pytest.raises(PermissionDenied):
        engine.access.check("vm.create", "cluster", cluster)


def test_permissions_as_ovirt_permission(engine, cluster):
    engine.users.ensure("fay")
    grant = {"role": "VmCreator", "user": "fay", "object_type": "cluster",
             "object_name": cluster}
    assert engine.permissions.ensure(**grant, check_mode=True).changed
    assert engine.permissions.info(user="fay") == []
    made = engine.permissions.ensure(**grant)
    assert made.changed and not engine.permissions.ensure(**grant).changed
    assert engine.permissions.info(user="fay") == [
        {"id": made.entity["id"], "role": "VmCreator", "user": "fay",
         "object_type": "cluster", "object_name": cluster}]
    assert engine.permissions.ensure(**grant, state="absent").changed
    assert engine.permissions.info() == []
    for bad, field in (({"role": "Root"}, "role"), ({"user": "nobody"}, "user"),
                       ({"object_name": "nosuch"}, "object_name"),
                       ({"object_type": "planet"}, "object_type"),
                       ({"group": "g"}, "user")):
        with pytest.raises(InvalidSpec) as error:
            engine.permissions.ensure(**{**grant, **bad})
        assert error.value.field == field


def test_a_token_is_shown_once_and_revoked_at_once(engine):
    engine.users.ensure("gil")
    made = engine.tokens.create(name="awx", user="gil", role="VmOperator", expires_in=3600)
    text = made.entity["token"]
    assert made.changed and "token" not in made.diff["after"]
    again = engine.tokens.create(name="awx", user="gil", role="VmOperator")
    assert not again.changed and "token" not in again.entity
    listed = engine.tokens.info(user="gil")
    assert [(t["name"], t["role"], t["revoked"]) for t in listed] == [("awx", "VmOperator", None)]
    assert text not in json.dumps([listed, engine.events.info(entity_type="user")])
    assert engine.authn.actor_for_token(text).token_role == "VmOperator"
    assert engine.tokens.revoke(name="awx", user="gil").changed
    assert not engine.tokens.revoke(name="awx", user="gil").changed
    with pytest.raises(Unauthenticated):
        engine.authn.actor_for_token(text)
    # The name makes a new token once the old one is revoked.
    assert engine.tokens.create(name="awx", user="gil").entity["token"] != text


def test_a_user_manages_its_own_tokens_only(engine):
    for name in ("hal", "ida"):
        engine.users.ensure(name)
    hal = engine.authn.actor_for_token(engine.tokens.create(name="t", user="hal")
                                       .entity["token"])
    with acting_as(hal):
        assert engine.tokens.create(name="mine").entity["user"] == "hal"
        assert [t["name"] for t in engine.tokens.info()] == ["mine", "t"]
        with pytest.raises(PermissionDenied) as denied:
            engine.tokens.create(name="theirs", user="ida")
        assert denied.value.permission == "access.manage"
        with pytest.raises(PermissionDenied):
            engine.tokens.info(user="ida")
    with pytest.raises(InvalidSpec) as local:
        engine.tokens.create(name="x")
    assert local.value.field == "user"


@pytest.mark.parametrize("options,field", [
    ({"expires_in": 10}, "expires_in"), ({"expires": "tomorrow"}, "expires"),
    ({"expires": "2000-01-01T00:00:00+00:00"}, "expires"),
    ({"expires_in": 3600, "expires": "2100-01-01T00:00:00"}, "expires"),
    ({"role": "God"}, "role"), ({"name": "bad name"}, "name"),
])
def test_bad_token_options_are_named(engine, options, field):
    engine.users.ensure("jo")
    with pytest.raises(InvalidSpec) as bad:
        engine.tokens.create(**{"name": "t", "user": "jo", **options})
    assert bad.value.field == field
