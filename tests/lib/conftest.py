"""Fixtures for fast tests of engine_lib's own logic (no libvirt, no network)."""

from __future__ import annotations

import itertools
import os
import sys
import xml.etree.ElementTree as ET

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "support"))
import postgres

from engine_lib.broker import AgentApi
from engine_lib.engine import Engine
from engine_lib.protocol.errors import (
    AgentError,
    AgentUnreachable,
    GuestAgentUnavailable,
    VmNotFound,
)


class FakeAgent(AgentApi):
    """Stands in for a host agent in tests of the engine's own decisions.

    What it does not model raises NotImplementedError (AgentApi's default); subclasses
    in the tests add what they need. test_agent_api.py keeps the signatures in line.
    """

    def __init__(self, name: str, memory_mib: int = 4096, cpus: int = 4):
        self.name, self.memory_mib, self.cpus = name, memory_mib, cpus
        self.vms: dict[str, str] = {}  # id -> status
        self.reachable = True
        self.deleted_volumes: list[dict] = []
        self.hooks: list[str] = []

    def _check(self):
        if not self.reachable:
            raise AgentUnreachable(f"agent {self.name} unreachable: connection refused",
                                   cause="Connection refused")

    def host_info(self, timeout=None):
        self._check()
        facts = {"hostname": self.name, "host_uuid": f"uuid-{self.name}", "cpus": self.cpus,
                 "memory_mib": self.memory_mib, "libvirt_version": "9.0.0", "hooks": self.hooks}
        if "connected_storage" in self.__dict__:  # as the agent reports connected domains
            failed = self.__dict__.get("storage_failures", {})
            facts["storage_domains"] = sorted(
                [{"name": n, "path": p, "available": True}
                 for n, p in self.connected_storage.items()]
                + [{"name": n, "path": p, "available": False, "error": e}
                   for n, (p, e) in failed.items() if n not in self.connected_storage],
                key=lambda entry: entry["name"])
        return facts

    def start_vm(self, xml, mode="fresh"):
        self._check()
        vm_id = ET.fromstring(xml).findtext("uuid")
        self.vms[vm_id] = "Up"
        self.last_xml = xml
        return {"id": vm_id, "status": "Up"}

    def vm_status(self, vm_id):
        self._check()
        if vm_id not in self.vms:
            raise VmNotFound(vm_id)
        return {"id": vm_id, "status": self.vms[vm_id]}

    def list_vms(self):
        self._check()
        return [{"id": vm_id, "status": status} for vm_id, status in self.vms.items()]

    def vm_xml(self, vm_id):
        self._check()
        return self.last_xml

    def destroy_vm(self, vm_id):
        self._check()
        if vm_id not in self.vms:
            raise VmNotFound(vm_id)
        self.vms[vm_id] = "Down"

    def shutdown_vm(self, vm_id, timeout=60):
        return self.destroy_vm(vm_id)

    def remove_vm(self, vm_id):
        self._check()
        self.vms.pop(vm_id, None)

    def delete_volumes(self, volumes):
        self._check()
        self.deleted_volumes.extend(volumes)

    def connect_storage(self, name, export, path, options=""):
        """Records the call; ``mount_errors`` (name -> message) makes a mount fail."""
        self._check()
        self.storage_calls = getattr(self, "storage_calls", []) + [("connect", name, export,
                                                                    path)]
        connected = self.__dict__.setdefault("connected_storage", {})
        failures = self.__dict__.setdefault("storage_failures", {})
        error = getattr(self, "mount_errors", {}).get(name)
        if error:
            failures[name] = (path, error)
            raise AgentError(error, code="MountFailed")
        failures.pop(name, None)
        changed = connected.get(name) != path
        connected[name] = path
        return {"name": name, "path": path, "mounted": True, "changed": changed}

    def disconnect_storage(self, name):
        self._check()
        self.storage_calls = getattr(self, "storage_calls", []) + [("disconnect", name)]
        path = self.__dict__.setdefault("connected_storage", {}).pop(name, None)
        return {"name": name, "path": path, "mounted": False, "changed": path is not None}

    def install_crl(self, crl):
        self._check()
        self.crls = getattr(self, "crls", []) + [crl]
        return {"installed": ["/etc/kestrel/pki/crl.pem"], "libvirtd_reloaded": False}

    def guest_info(self, vm_id):
        self._check()
        report = getattr(self, "guests", {}).get(vm_id)  # vm id -> guest agent report
        if report is None:
            raise GuestAgentUnavailable(f"guest agent of VM {vm_id} not responding")
        return {"id": vm_id, **report}

    def guests_info(self):
        self._check()
        reports = getattr(self, "guests", {})
        running = [vm_id for vm_id, status in self.vms.items() if status == "Up"]
        return {"guests": {vm_id: reports[vm_id] for vm_id in running if vm_id in reports},
                "unavailable": {vm_id: "guest agent not responding" for vm_id in running
                                if vm_id not in reports}}


@pytest.fixture
def agents():
    """Address -> FakeAgent; the engine creates one on first contact."""
    return {}


@pytest.fixture
def unreachable_agent(agents):
    agent = agents["10.9.9.9"] = FakeAgent("unreachable")
    agent.reachable = False
    return "10.9.9.9"


@pytest.fixture(scope="session")
def postgres_server():
    with postgres.server() as url_template:
        yield url_template


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Every engine test runs on the embedded SQLite store and on real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/engine.db"
    template = request.getfixturevalue("postgres_server")
    return postgres.create_database(template, f"test_{next(_databases)}")


@pytest.fixture
def engine(tmp_path, agents, db_url):
    """An engine on a fresh database whose agents are FakeAgents by address."""

    def factory(address, port):
        return agents.setdefault(address, FakeAgent(address))

    # The tests' file domains live under /srv, allowed as an administrator would.
    (tmp_path / "engine").mkdir(exist_ok=True)
    (tmp_path / "engine" / "engine.conf").write_text("[storage]\nfile_domain_roots = /srv\n")
    eng = Engine.open(engine_dir=str(tmp_path / "engine"), db_url=db_url, agent_factory=factory)
    yield eng
    eng.close()


@pytest.fixture
def cluster(engine):
    engine.clusters.ensure("c1", virt_type="qemu")
    return "c1"
