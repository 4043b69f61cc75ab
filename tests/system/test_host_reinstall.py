"""Host reinstall for real: the engine logs in to lab host h3 over SSH with its own key
(made by `kestrel engine init`, authorized by the host role), installs its agent wheel
into the host's agent venv and restarts the agent, which then runs a VM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from agent_fixtures import PIDFILE, is_alive, run_in_host
from cryptography import x509
from engine_fixtures import REPO, _collections_path
from test_migration import tiny_guest, wait_for_console
from test_ssh_host_keys import changed_host_key, sshd_public_key

import engine_lib
from engine_lib import engine_key
from engine_lib.services.host_deploy import AGENT_CERT, AGENT_VENV, HostDeployFailed, HostKeyChanged
from kestrel_lab import sshd

pytestmark = pytest.mark.lab

KESTREL = str(Path(sys.executable).parent / "kestrel")


@pytest.fixture
def lab_hosts(engine, engine_dir, agents, lab, tmp_path):
    """The engine's key made by `kestrel engine init`, h1..h3 registered; the lab's
    authorized_keys (which every lab sshd reads) is restored afterwards."""
    subprocess.run([KESTREL, "engine", "init", "--engine-dir", str(engine_dir),
                    "--db-url", f"sqlite:///{tmp_path}/init.db"], check=True,
                   capture_output=True)
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    authorized = Path(sshd.authorized_keys(lab[0].state_dir))
    saved = authorized.read_text()
    yield {agent.name: agent for agent in agents}
    authorized.write_text(saved)


def agent_pid(agent) -> int:
    return int(run_in_host(agent.host, ["cat", PIDFILE], text=True).stdout)


def agent_certificate(agent) -> x509.Certificate:
    return x509.load_pem_x509_certificate(run_in_host(agent.host, ["cat", AGENT_CERT]).stdout)


def authorize_engine_key(engine_dir, agent) -> None:
    """What the host role's engine_key tasks do (lab_hosts restores the file afterwards)."""
    with open(sshd.authorized_keys(agent.host.state_dir), "a") as authorized:
        authorized.write(engine_key.public_key(engine_dir) + "\n")


def authorize_with_the_host_role(engine_dir, lab, tmp_path) -> list[str]:
    """Run the role's engine_key tasks against h3 twice; each run's PLAY RECAP line for h3."""
    play = [{"hosts": "h3", "gather_facts": False, "tasks": [{
        "ansible.builtin.include_role": {"name": "kestrel.virt.host",
                                         "tasks_from": "engine_key.yml"}}]}]
    path = tmp_path / "authorize.yml"
    path.write_text(yaml.safe_dump(play))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": _collections_path(),
           "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "false"}
    recaps = []
    for _ in range(2):
        run = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i",
             os.path.join(lab[0].state_dir, "inventory.yml"), str(path),
             "-e", f"kestrel_host_engine_dir={engine_dir}",
             "-e", f"kestrel_host_controller_kestrel={KESTREL}",
             "-e", f"kestrel_host_authorized_keys_file={sshd.authorized_keys(lab[0].state_dir)}"],
            env=env, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
        assert run.returncode == 0, run.stdout + run.stderr
        recaps.append(next(line for line in run.stdout.splitlines()
                           if line.startswith("h3 ") and "ok=" in line))
    return recaps


def test_a_host_whose_sshd_refuses_the_engine_key_ends_install_failed(
        engine, engine_dir, lab_hosts):
    h3 = lab_hosts["h3"]
    public = engine_key.public_key(engine_dir)
    assert public not in Path(sshd.authorized_keys(h3.host.state_dir)).read_text()
    pid = agent_pid(h3)
    engine.hosts.maintenance("h3")

    with pytest.raises(HostDeployFailed, match="copying the agent wheel: exit 255: .*"
                                               "Permission denied") as err:
        engine.hosts.reinstall("h3")

    host = engine.hosts.info("h3")[0]
    assert host["status"] == "InstallFailed"
    assert "Permission denied (publickey)" in host["install_error"]
    assert host["agent_version"] == ""
    assert "host reinstall failed at copying the agent wheel" in engine.events.info(
        entity_type="host", entity_name="h3")[-1]["message"]
    assert err.value.details["reason"] in host["install_error"]
    # Nothing else changed: the same agent process still serves the host.
    assert agent_pid(h3) == pid and is_alive(pid)
    assert h3.client().host_info()["hostname"] == "h3"


def test_reinstall_with_the_role_authorized_key_restarts_the_agent_and_the_host_runs_vms(
        engine, engine_dir, lab, lab_hosts, lab_guest, playbook, tmp_path):
    h3 = lab_hosts["h3"]
    recaps = authorize_with_the_host_role(engine_dir, lab, tmp_path)
    assert "changed=1" in recaps[0] and "changed=0" in recaps[1], recaps
    old_pid = agent_pid(h3)
    old_cert = agent_certificate(h3)

    task = {"kestrel.virt.host": {"name": "h3", "state": "reinstalled"}}
    try:
        predicted, real, again = playbook.run([{**task, "check_mode": True}, task, task])
    finally:
        h3.pid = agent_pid(h3)  # the session's teardown stops whichever agent runs now

    assert not predicted.get("failed") and not real.get("failed"), (predicted, real)
    assert predicted["changed"] and predicted["host"]["status"] == "Up"
    assert real["changed"] and not again["changed"], again
    # A new agent process, from the venv the engine installed into, serves the host.
    assert h3.pid != old_pid and not is_alive(old_pid)
    cmdline = Path(f"/proc/{h3.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert f"{AGENT_VENV}/bin/kestrel-agent" in cmdline
    installed = run_in_host(h3.host, [f"{AGENT_VENV}/bin/python", "-c",
                                      "import engine_lib; print(engine_lib.__version__)"],
                            text=True).stdout.strip()
    host = engine.hosts.info("h3")[0]
    assert host["status"] == "Up"
    assert host["agent_version"] == installed == engine_lib.__version__
    assert real["host"]["agent_wheel_sha256"] == host["agent_wheel_sha256"] != ""
    messages = [e["message"] for e in engine.events.info(entity_type="host", entity_name="h3")]
    assert any(m.startswith("host is in Maintenance") for m in messages)
    done = next(m for m in messages if m.startswith("host reinstalled: "))
    assert f"pid {old_pid} -> {h3.pid}" in done and "certificate kept" in done
    assert agent_certificate(h3) == old_cert  # no re-key without enroll_certificate
    assert messages[-1] == "host activated: Up (was Maintenance)"
    # host_info reports the storage domains the new agent serves.
    assert {d["name"] for d in host["storage_domains"]} == {"data", "images"}

    # The reinstalled host runs a VM.
    vm = engine.vms.ensure(tiny_guest("ri-a", placement={"hosts": ["h3"]}),
                           state="running").entity
    try:
        assert vm["host"] == "h3"
        wait_for_console(engine, "ri-a", "kestrel-guest: up")
    finally:
        engine.vms.ensure({"name": "ri-a"}, state="absent")


def test_a_changed_ssh_host_key_fails_the_reinstall_until_the_operator_gives_it(
        engine, engine_dir, lab_hosts):
    h3 = lab_hosts["h3"]
    authorize_engine_key(engine_dir, h3)
    recorded = engine.hosts.info("h3")[0]["ssh_host_keys"]
    assert recorded == [sshd_public_key(h3.host)]
    old_cert, pid = agent_certificate(h3), agent_pid(h3)
    try:
        with changed_host_key(h3.host) as new_key:
            with pytest.raises(HostKeyChanged, match="SSH host key of .* is not the one "
                                                     "recorded for host 'h3'"):
                engine.hosts.reinstall("h3", force=True)
            # Refused before anything changed: the host is Up, its agent untouched.
            assert engine.hosts.info("h3")[0]["status"] == "Up"
            assert agent_pid(h3) == pid and engine.hosts.info("h3")[0]["ssh_host_keys"] == recorded

            # The operator gives the new key, and asks for a new key pair too.
            done = engine.hosts.reinstall("h3", force=True, ssh_host_keys=[new_key],
                                          enroll_certificate=True)
    finally:
        h3.pid = agent_pid(h3)  # the session's teardown stops whichever agent runs now
    assert done.changed and done.entity["status"] == "Up"
    assert done.entity["ssh_host_keys"] == [new_key]
    cert = agent_certificate(h3)
    assert cert.serial_number != old_cert.serial_number
    assert cert.public_key() != old_cert.public_key()
    assert h3.client().host_info()["hostname"] == "h3"  # the new key serves mutual TLS
