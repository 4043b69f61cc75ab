"""The host agent for real: agents in lab hosts, their libvirtd and QEMU, over mutual TLS."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
from agent_fixtures import AGENT_PORT, CONFIG_PATH, PIDFILE, guest_domain_xml

from engine_lib import pki
from engine_lib.broker import AgentClient, client_context
from engine_lib.protocol.errors import (
    AgentUnreachable,
    CertificateError,
    Conflict,
    InvalidSpec,
    VmNotFound,
)
from kestrel_lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

BOOT_TIMEOUT = 60.0


@pytest.fixture
def foreign_pki(tmp_path) -> str:
    path = tmp_path / "foreign"
    pki.init_ca(str(path), "not the engine CA")
    return str(path)


def wait_for_console(client: AgentClient, vm_id: str, text: str) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        log = client.console_log(vm_id, 65536)
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.5)


def qemu_img_info(path: str) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", path],
                                     capture_output=True, check=True, text=True).stdout)


def test_each_agent_reports_its_own_host(agents):
    for agent in agents:
        info = agent.client().host_info()
        assert info["name"] == agent.name
        assert info["host_uuid"] == agent.host.host_uuid
        assert info["libvirt_version"] and info["qemu_version"]
        assert info["cpus"] > 0 and info["memory_mib"] > info["free_memory_mib"] > 0
        assert [d["name"] for d in info["storage_domains"]] == ["data", "images"]
        assert all(d["available"] for d in info["storage_domains"])
    assert len({a.client().host_info()["host_uuid"] for a in agents}) == len(agents)


def test_vm_lifecycle_from_placeholder_xml(agents, lab_guest):
    agent = agents[0]
    client = agent.client()
    xml, volume = guest_domain_xml()
    vm_id = ET.fromstring(xml).findtext("uuid")
    volume_path = (f"{lab_hosts.shared_dir(agent.host.state_dir, 'data')}/"
                   f"{volume['image']}/{volume['volume']}")

    started = client.start_vm(xml)
    assert (started["id"], started["status"], started["started"]) == (vm_id, "Up", True)
    # The agent created the missing volume as a thin qcow2 of the size in the metadata.
    info = qemu_img_info(volume_path)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 * 2**20)
    # Starting a running VM again reports it and does not start a second one.
    again = client.start_vm(xml)
    assert (again["status"], again["started"]) == ("Up", False)
    assert [vm["id"] for vm in client.list_vms()].count(vm_id) == 1
    assert client.vm_status(vm_id)["status"] == "Up"

    live = ET.fromstring(client.vm_xml(vm_id))
    sent = ET.fromstring(xml)
    assert {a.get("name") for a in sent.iter("alias")} <= \
        {a.get("name") for a in live.iter("alias")}
    assert live.find("devices/disk/source").get("file") == volume_path
    assert live.findtext("os/kernel") == lab_guest[0]
    assert live.find("devices/serial/log").get("file") == \
        f"/var/log/kestrel/console/{vm_id}.log"
    assert "/kestrel-placeholder/" not in client.vm_xml(vm_id)

    log = wait_for_console(client, vm_id, "kestrel-guest: nics")
    assert "kestrel-guest: up" in log
    assert "kestrel-guest: disks vda" in log

    # What is in use is protected.
    with pytest.raises(Conflict, match="running"):
        client.remove_vm(vm_id)
    with pytest.raises(Conflict, match="is a disk of a VM defined on this host"):
        client.delete_volumes([volume])
    assert qemu_img_info(volume_path)["format"] == "qcow2"

    stopped = client.destroy_vm(vm_id)
    assert (stopped["status"], stopped["exit_reason"]) == ("Down", "destroyed")
    assert client.remove_vm(vm_id) == {"id": vm_id, "removed": True}
    with pytest.raises(VmNotFound):
        client.vm_status(vm_id)
    # The console log outlives the VM; the volume stays until deleted explicitly.
    assert "kestrel-guest: up" in client.console_log(vm_id)
    assert client.delete_volumes([volume])[0]["deleted"] is True
    with pytest.raises(subprocess.CalledProcessError):
        qemu_img_info(volume_path)


def test_graceful_shutdown_powers_off_through_acpi(agents, lab_guest):
    client = agents[-1].client()
    xml, volume = guest_domain_xml()
    vm_id = client.start_vm(xml)["id"]
    try:
        assert "kestrel-guest: up" in wait_for_console(client, vm_id, "built-in shell")
        result = client.shutdown_vm(vm_id, timeout=30)
        assert (result["status"], result["forced"], result["exit_reason"]) == \
            ("Down", False, "shutdown")
        # A defined, stopped VM starts again from the same volume.
        assert client.start_vm(xml)["started"] is True
    finally:
        client.destroy_vm(vm_id)
        client.remove_vm(vm_id)
        client.delete_volumes([volume])


def test_start_refuses_a_storage_domain_the_host_lacks(agents):
    client = agents[0].client()
    xml, _ = guest_domain_xml()
    xml = xml.replace("/kestrel-placeholder/storage/data/", "/kestrel-placeholder/storage/nfs1/")
    vm_id = ET.fromstring(xml).findtext("uuid")
    with pytest.raises(InvalidSpec, match="storage domain 'nfs1' is not attached"):
        client.start_vm(xml)
    with pytest.raises(VmNotFound):
        client.vm_status(vm_id)


def _raw_request(agent, context: ssl.SSLContext, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPSConnection(agent.address, AGENT_PORT, context=context, timeout=10)
    try:
        conn.request("POST", "/api/v1/vms", body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _our_vms(agent) -> list[tuple[str, str]]:
    """This module's VMs (other test sessions may share the lab and run their own)."""
    return [(vm["id"], vm["status"]) for vm in agent.client().list_vms()
            if vm["name"].startswith("agent-test-")]


def test_malformed_json_is_400_and_changes_nothing(agents):
    agent = agents[0]
    before = _our_vms(agent)
    status, doc = _raw_request(agent, client_context(agent.pki_dir), b'{"xml": "<domain>')
    assert status == 400
    assert doc["error"]["code"] == "InvalidSpec"
    assert "not valid JSON" in doc["error"]["message"]
    assert _our_vms(agent) == before


def test_agent_refuses_a_client_without_certificate(agents):
    agent = agents[0]
    context = ssl.create_default_context(cafile=f"{agent.pki_dir}/ca.pem")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw_request(agent, context, b"{}")


def test_agent_refuses_a_client_certificate_from_another_ca(agents, foreign_pki):
    agent = agents[0]
    context = ssl.create_default_context(cafile=f"{agent.pki_dir}/ca.pem")
    context.load_cert_chain(f"{foreign_pki}/engine.pem", f"{foreign_pki}/engine.key")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw_request(agent, context, b"{}")
    # The agent says why in its log.
    log = agent.run(["cat", "/var/log/kestrel/agent.log"], text=True).stdout
    assert "refused TLS connection from 10.77.0.254" in log


def test_engine_refuses_an_agent_whose_certificate_it_did_not_sign(agents, foreign_pki):
    client = AgentClient(agents[0].address, AGENT_PORT, foreign_pki)
    with pytest.raises(CertificateError, match="not signed by the engine CA"):
        client.host_info()


def test_unreachable_agent_names_address_and_cause(agents):
    address = agents[0].address
    with pytest.raises(AgentUnreachable, match=rf"agent {address}:54399 unreachable: "
                                               "Connection refused"):
        AgentClient(address, 54399, agents[0].pki_dir).host_info()
    with pytest.raises(AgentUnreachable, match=r"agent 10.77.0.250:54321 unreachable"):
        AgentClient("10.77.0.250", AGENT_PORT, agents[0].pki_dir, timeout=1).host_info()


def test_a_second_agent_with_the_same_pidfile_refuses_to_start(agents):
    agent = agents[0]
    result = agent.run([sys.executable, "-m", "engine_lib.agent", "--config", CONFIG_PATH,
                        "--daemon", "--pidfile", PIDFILE], check=False, text=True)
    assert result.returncode == 1
    assert f"an agent is already running (pid {agent.pid}" in result.stderr
    assert agent.client().host_info()["name"] == agent.name
