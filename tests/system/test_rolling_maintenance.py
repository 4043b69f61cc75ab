"""playbooks/rolling_maintenance.yml for real: three lab hosts serviced one at a time over SSH,
their VMs migrating live out of the way, and the run stopping at the first failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_fixtures import REPO, _collections_path
from test_migration import copies, tiny_guest, wait_for_console

pytestmark = pytest.mark.lab

# Runs inside each host while it is in maintenance: records the host's own
# hostname (its UTS namespace) in a directory the test reads, and fails where told.
PATCH_TASKS = [
    {"name": "What a patch would do", "ansible.builtin.command": "hostname",
     "register": "patch_hostname", "changed_when": True},
    {"name": "Record it", "ansible.builtin.copy": {
        "dest": "{{ marker_dir }}/{{ inventory_hostname }}",
        "content": "{{ patch_hostname.stdout }}"}},
    {"name": "A patch that breaks", "ansible.builtin.fail": {"msg": "patch failed"},
     "when": "inventory_hostname == (fail_on | default(''))"},
]


@pytest.fixture
def serviced(engine, lab, agents, lab_guest, tmp_path):
    """Three registered hosts, two running guests, an inventory and a patch task file."""
    # The lab's libvirtds serve plain qemu+tcp (TLS: test_migration_tls.py).
    engine.clusters.ensure("lab", virt_type="qemu", migration_encrypted=False)
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    created = [engine.vms.ensure(tiny_guest(name), state="running").entity
               for name in ("roll-a", "roll-b")]
    for vm in created:
        wait_for_console(engine, vm["name"], "kestrel-guest: up")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"kestrel_hosts": {
        "hosts": {a.name: {"ansible_host": a.address} for a in agents},
        "vars": {"ansible_user": "root",
                 "ansible_ssh_private_key_file": lab[0].ssh_key,
                 "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                            "-o UserKnownHostsFile=/dev/null",
                 "ansible_python_interpreter": "/usr/bin/python3",
                 "ansible_pipelining": True}}}}}))
    patch = tmp_path / "patch.yml"
    patch.write_text(yaml.safe_dump(PATCH_TASKS))
    markers = tmp_path / "patched"
    markers.mkdir()
    yield inventory, patch, markers, created
    for name in ("h1", "h2", "h3"):
        engine.hosts.activate(name)
    for vm in created:
        engine.vms.ensure({"name": vm["name"]}, state="absent")
        assert copies(agents, vm["id"]) == {}, "a domain stayed behind"


def rolling(engine, inventory: Path, patch: Path, markers: Path, *extra: str):
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": _collections_path(),
           "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "false"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
         str(REPO / "playbooks" / "rolling_maintenance.yml"), "-e", "kestrel_cluster=lab",
         "-e", f"kestrel_engine_dir={engine.config.engine_dir}",
         "-e", f"kestrel_db_url={engine.store.url}", "-e", f"kestrel_patch_tasks={patch}",
         "-e", f"marker_dir={markers}", *extra],
        env=env, capture_output=True, text=True, timeout=900, check=False)


def host_story(engine) -> list[tuple[str, str]]:
    """(host, what happened) in the order the audit log recorded it."""
    story = []
    for entry in engine.events.info(entity_type="host", limit=1000):
        message = entry["message"]
        if message.startswith("host is in Maintenance"):
            story.append((entry["entity_name"], "maintenance"))
        elif message.startswith("host activated"):
            story.append((entry["entity_name"], "active"))
    return story


def test_every_host_is_serviced_in_turn_while_the_vms_keep_running(engine, agents, serviced):
    inventory, patch, markers, created = serviced

    run = rolling(engine, inventory, patch, markers)

    assert run.returncode == 0, run.stdout + run.stderr
    assert host_story(engine) == [("h1", "maintenance"), ("h1", "active"),
                                  ("h2", "maintenance"), ("h2", "active"),
                                  ("h3", "maintenance"), ("h3", "active")]
    # The patch step ran inside each host, while it was in maintenance.
    assert {p.name: p.read_text() for p in markers.iterdir()} == {
        "h1": "h1", "h2": "h2", "h3": "h3"}
    assert [h["status"] for h in engine.hosts.info()] == ["Up", "Up", "Up"]
    for vm in created:
        row = engine.vms.info(vm["name"])[0]
        assert row["status"] == "Up"
        assert copies(agents, vm["id"]) == {row["host"]: "running"}


def test_the_run_stops_at_the_first_failure(engine, agents, serviced):
    inventory, patch, markers, created = serviced

    run = rolling(engine, inventory, patch, markers, "-e", "fail_on=h2")

    assert run.returncode != 0
    assert "patch failed" in run.stdout
    # h1 done, h2 left in maintenance where its patch failed, h3 never touched.
    assert host_story(engine) == [("h1", "maintenance"), ("h1", "active"),
                                  ("h2", "maintenance")]
    assert sorted(p.name for p in markers.iterdir()) == ["h1", "h2"]
    assert {h["name"]: h["status"] for h in engine.hosts.info()} == {
        "h1": "Up", "h2": "Maintenance", "h3": "Up"}
    for vm in created:
        row = engine.vms.info(vm["name"])[0]
        assert row["host"] != "h2"
        assert copies(agents, vm["id"]) == {row["host"]: "running"}
