"""Permissions inside VmService.ensure: creating, editing, powering and deleting each
need their own, checked before anything is committed or sent to a host."""

import pytest

from engine_lib.protocol.errors import PermissionDenied
from engine_lib.services.actor import acting_as

VM = {"name": "vm1", "cluster": "c1", "memory": "256MiB"}


@pytest.fixture
def fleet(engine, cluster, agents):
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.vms.ensure(VM)  # made on the engine host, owned by no API user
    return agents


def as_user(engine, name, role, object_type="system", object_name=""):
    engine.users.ensure(name)
    engine.permissions.ensure(role=role, user=name, object_type=object_type,
                              object_name=object_name)
    token = engine.tokens.create(name="t", user=name).entity["token"]
    return acting_as(engine.authn.actor_for_token(token))


def denied(action, permission):
    with pytest.raises(PermissionDenied) as error:
        action()
    assert error.value.permission == permission
    return error.value


def test_a_vm_operator_starts_but_cannot_change_memory(engine, fleet):
    with as_user(engine, "op", "VmOperator", "vm", "vm1"):
        denied(lambda: engine.vms.ensure({**VM, "memory": "512MiB"}, state="running"),
               "vm.edit")
        assert engine.vms.info("vm1")[0]["status"] == "Down"  # nothing written, not started
        assert not fleet["10.0.0.1"].vms
        assert engine.vms.ensure(VM, state="running").entity["status"] == "Up"
        denied(lambda: engine.vms.ensure({"name": "vm1"}, state="absent"), "vm.delete")
    vm = engine.vms.info("vm1")[0]
    assert vm["memory_mib"] == 256 and vm["status"] == "Up"
    assert [e["user"] for e in engine.events.info(entity_type="vm", entity_name="vm1")
            if "start" in e["message"]][-1:] == ["op"]


def test_a_reader_can_neither_start_nor_edit(engine, fleet):
    with as_user(engine, "ro", "ReadOnly"):
        assert not engine.vms.ensure(VM).changed
        denied(lambda: engine.vms.ensure(VM, state="running"), "vm.power")
    assert not fleet["10.0.0.1"].vms


def test_a_vm_creator_owns_what_it_creates_and_nothing_else(engine, fleet):
    mine = {"name": "mine", "cluster": "c1", "memory": "256MiB"}
    with as_user(engine, "maker", "VmCreator", "cluster", "c1"):
        assert engine.vms.ensure(mine, state="running").entity["status"] == "Up"
        assert engine.vms.ensure({**mine, "memory": "512MiB"}).changed
        denied(lambda: engine.vms.ensure({**VM, "memory": "512MiB"}), "vm.edit")
        denied(lambda: engine.vms.ensure({**mine, "name": "other", "cluster": "c2"}),
               "vm.create")
    assert engine.permissions.info(user="maker", object_type="vm") == [
        {"id": engine.permissions.info(object_type="vm")[0]["id"], "role": "UserVmManager",
         "user": "maker", "object_type": "vm", "object_name": "mine"}]
    assert engine.vms.info("vm1")[0]["memory_mib"] == 256
    with as_user(engine, "maker2", "VmCreator", "cluster", "c1"):
        denied(lambda: engine.vms.ensure({**mine, "memory": "1GiB"}), "vm.edit")
    with acting_as(engine.authn.actor_for_token(
            engine.tokens.create(name="t2", user="maker").entity["token"])):
        assert engine.vms.ensure({"name": "mine"}, state="absent").changed
    # The grant went with the VM: a later VM of the same name is not the maker's.
    assert engine.permissions.info(object_type="vm") == []


def test_creating_from_a_source_needs_read_on_it_before_it_is_looked_up(engine, fleet):
    with as_user(engine, "maker", "VmCreator", "cluster", "c1"):
        error = denied(lambda: engine.vms.ensure({"name": "x", "cluster": "c1",
                                                  "template": "nosuch"}), "read")
        assert error.details["object_type"] == "template"
        denied(lambda: engine.vms.ensure({"name": "x", "cluster": "c1", "snapshot_vm": "gone",
                                          "disks": [{"name": "root"}]}), "read")
    assert [vm["name"] for vm in engine.vms.info()] == ["vm1"]


def test_removing_a_host_or_cluster_drops_its_grants(engine, fleet):
    engine.users.ensure("admin")
    engine.permissions.ensure(role="HostAdmin", user="admin", object_type="host",
                              object_name="h1")
    engine.clusters.ensure("c2")
    engine.permissions.ensure(role="ClusterAdmin", user="admin", object_type="cluster",
                              object_name="c2")
    engine.hosts.remove("h1")
    engine.clusters.remove("c2")
    assert engine.permissions.info(user="admin") == []
