"""Who may do what: roles granted on the system, a cluster or an object, inherited
downwards, within a token's narrower role (engine_lib.services.access)."""

import pytest
from sqlalchemy import event, select

from engine_lib.model import Group, GroupMember, Template, User, Vm
from engine_lib.protocol.errors import PermissionDenied
from engine_lib.services import access
from engine_lib.services.access import ENTITIES
from engine_lib.services.actor import Actor, acting_as


def add_user(engine, name, *grants, group=None):
    """A user holding (role, object_type, object_name) grants, itself or via ``group``."""
    with engine.store.transaction() as session:
        user = User(name=name)
        session.add(user)
        session.flush()
        principal = ("user", user.id)
        if group:
            found = session.scalars(select(Group).where(Group.name == group)).first()
            if found is None:
                found = Group(name=group)
                session.add(found)
                session.flush()
            session.add(GroupMember(group_id=found.id, user_id=user.id))
            principal = ("group", found.id)
        for role, object_type, object_name in grants:
            object_id = "" if object_type == "system" else session.scalars(
                select(ENTITIES[object_type].id)
                .where(ENTITIES[object_type].name == object_name)).first()
            access.grant(session, role, *principal, object_type, object_id)
        return Actor(name, user.id)


def allowed(engine, who, permission, object_type, object_name=""):
    with acting_as(who):
        try:
            engine.access.check(permission, object_type, object_name)
        except PermissionDenied:
            return False
        return True


@pytest.fixture
def world(engine, agents):
    for cluster in ("c1", "c2"):
        engine.clusters.ensure(cluster, virt_type="qemu")
    engine.hosts.ensure("h1", address="10.0.0.1", cluster="c1")
    for vm, cluster in (("v1", "c1"), ("v2", "c1"), ("w1", "c2")):
        engine.vms.ensure({"name": vm, "cluster": cluster, "memory": "256MiB"})
    return engine


def test_the_engine_hosts_own_caller_may_do_everything(world):
    assert allowed(world, Actor("local:root"), "access.manage", "system")


def test_roles_hold_downwards_from_the_system(world):
    reader = add_user(world, "reader", ("ReadOnly", "system", ""))
    assert allowed(world, reader, "read", "vm", "w1")
    assert allowed(world, reader, "read", "host", "h1")
    assert not allowed(world, reader, "vm.power", "vm", "w1")


def test_roles_hold_downwards_from_a_cluster_only(world):
    admin = add_user(world, "admin1", ("ClusterAdmin", "cluster", "c1"))
    assert allowed(world, admin, "vm.edit", "vm", "v1")
    assert allowed(world, admin, "host.maintenance", "host", "h1")
    assert allowed(world, admin, "vm.create", "cluster", "c1")
    assert not allowed(world, admin, "vm.edit", "vm", "w1")
    assert not allowed(world, admin, "vm.create", "cluster", "c2")
    assert not allowed(world, admin, "cluster.create", "system")


def test_a_vm_grant_holds_on_that_vm_alone(world):
    owner = add_user(world, "owner", ("UserVmManager", "vm", "v1"))
    assert allowed(world, owner, "vm.edit", "vm", "v1")
    assert not allowed(world, owner, "vm.edit", "vm", "v2")
    assert not allowed(world, owner, "cluster.edit", "cluster", "c1")
    assert not allowed(world, owner, "read", "cluster", "c1")


def test_a_groups_grant_holds_for_its_members(world):
    member = add_user(world, "member", ("VmOperator", "cluster", "c2"), group="ops")
    assert allowed(world, member, "vm.power", "vm", "w1")
    assert not allowed(world, member, "vm.edit", "vm", "w1")


def test_a_token_narrowed_to_a_role_never_exceeds_it(world):
    user = add_user(world, "root2", ("SuperUser", "system", ""))
    token = Actor("root2", user.user_id, "t1", token_role="VmOperator")
    assert allowed(world, token, "vm.power", "vm", "v1")
    with acting_as(token), pytest.raises(PermissionDenied) as denied:
        world.access.check("vm.edit", "vm", "v1")
    assert denied.value.permission == "vm.edit"
    assert "lacks permission 'vm.edit' on vm 'v1'" in str(denied.value)
    # ... nor its user's grants.
    narrow_user = add_user(world, "op", ("ReadOnly", "system", ""))
    assert not allowed(world, Actor("op", narrow_user.user_id, "t2", "SuperUser"),
                       "vm.power", "vm", "v1")


def test_a_missing_object_is_decided_on_the_system(world):
    reader = add_user(world, "sysreader", ("ReadOnly", "system", ""))
    cluster_admin = add_user(world, "cadmin", ("ClusterAdmin", "cluster", "c1"))
    assert allowed(world, reader, "read", "vm", "nosuchvm")
    # Without read on the system a caller cannot tell missing from hidden.
    assert not allowed(world, cluster_admin, "read", "vm", "nosuchvm")


def test_a_grant_does_not_pass_to_a_new_object_of_the_same_name(world):
    owner = add_user(world, "owner2", ("UserVmManager", "vm", "v2"))
    with world.store.transaction() as session:
        old = session.scalars(select(Vm).where(Vm.name == "v2")).one()
        access.forget_object(session, "vm", old.id)
    assert not allowed(world, owner, "vm.edit", "vm", "v2")


def test_grant_is_idempotent(world):
    user = add_user(world, "idem")
    with world.store.transaction() as session:
        assert access.grant(session, "ReadOnly", "user", user.user_id, "system", "")
        assert not access.grant(session, "ReadOnly", "user", user.user_id, "system", "")


def test_one_query_decides_a_check(world):
    user = add_user(world, "counted", ("VmOperator", "vm", "v1"), group="counted-group")
    statements = []

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(world.store.engine, "before_cursor_execute", count)
    try:
        assert allowed(world, user, "vm.power", "vm", "v1")
    finally:
        event.remove(world.store.engine, "before_cursor_execute", count)
    assert len(statements) == 1


def _visible_names(engine, who, entity):
    with acting_as(who), engine.store.transaction(commit=False) as session:
        clause = access.visible(session, next(k for k, v in ENTITIES.items() if v is entity))
        query = select(entity.name).order_by(entity.name)
        return list(session.scalars(query if clause is None else query.where(clause)))


def test_visible_selects_what_the_actor_may_read(world):
    assert _visible_names(world, Actor("local:root"), Vm) == ["v1", "v2", "w1"]
    reader = add_user(world, "allreader", ("ReadOnly", "system", ""))
    assert _visible_names(world, reader, Vm) == ["v1", "v2", "w1"]
    mixed = add_user(world, "mixed", ("VmOperator", "vm", "v1"), ("ReadOnly", "cluster", "c2"))
    assert _visible_names(world, mixed, Vm) == ["v1", "w1"]
    from engine_lib.model import Cluster, Host
    assert _visible_names(world, mixed, Cluster) == ["c2"]
    assert _visible_names(world, mixed, Host) == []
    assert _visible_names(world, add_user(world, "nobody"), Vm) == []
    assert _visible_names(world, add_user(world, "notemplates"), Template) == []
