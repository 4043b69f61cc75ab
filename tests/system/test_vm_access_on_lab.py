"""Permissions inside vms.ensure with real agents and QEMU: what a role may not do
never reaches a host, and what it may runs for real."""

from __future__ import annotations

import pytest

from engine_lib.protocol.errors import PermissionDenied
from engine_lib.services.actor import acting_as

GUEST = {"name": "opvm", "cluster": "lab", "memory": "128MiB", "machine": "pc",
         "kernel": "images:vmlinuz", "initrd": "images:initrd.img", "cmdline": "console=ttyS0",
         "disks": [{"name": "data", "size": "64MiB", "storage_domain": "data"}],
         "nics": [{"name": "nic1", "network": "kestrelmgmt"}]}


@pytest.fixture
def cluster(engine, agents):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    return "lab"


def actor_with(engine, name, role, object_type, object_name):
    engine.users.ensure(name)
    engine.permissions.ensure(role=role, user=name, object_type=object_type,
                              object_name=object_name)
    return engine.authn.actor_for_token(engine.tokens.create(name="t", user=name)
                                        .entity["token"])


def test_a_vm_operator_runs_a_real_guest_but_cannot_resize_or_delete_it(engine, cluster,
                                                                        agents):
    engine.vms.ensure(GUEST)
    operator = actor_with(engine, "op", "VmOperator", "vm", "opvm")
    reader = actor_with(engine, "ro", "ReadOnly", "cluster", "lab")
    try:
        with acting_as(reader), pytest.raises(PermissionDenied) as denied:
            engine.vms.ensure(GUEST, state="running")
        assert denied.value.permission == "vm.power"
        assert engine.vms.info("opvm")[0]["status"] == "Down"

        with acting_as(operator):
            vm = engine.vms.ensure(GUEST, state="running").entity
            assert vm["status"] == "Up"
            host = next(a for a in agents if a.name == vm["host"])
            with pytest.raises(PermissionDenied) as denied:
                engine.vms.ensure({**GUEST, "memory": "256MiB"}, state="running")
            assert denied.value.permission == "vm.edit"
            with pytest.raises(PermissionDenied):
                engine.vms.ensure({"name": "opvm"}, state="absent")
        # Nothing written, and the domain the host runs is untouched.
        assert engine.vms.info("opvm")[0]["memory_mib"] == 128
        assert host.client().vm_status(vm["id"])["status"] == "Up"

        with acting_as(reader), pytest.raises(PermissionDenied):
            engine.vms.ensure(GUEST, state="stopped", force=True)
        assert host.client().vm_status(vm["id"])["status"] == "Up"
        with acting_as(operator):
            assert engine.vms.ensure(GUEST, state="stopped", force=True).entity["status"] \
                == "Down"
        started = [e for e in engine.events.info(entity_type="vm", entity_name="opvm")
                   if e["user"] == "op"]
        assert started and all(e["token_id"] == operator.token_id for e in started)
    finally:
        engine.vms.ensure({"name": "opvm"}, state="absent")
