"""The agent's HTTPS layer and the engine's client, over real TLS on 127.0.0.1.

No libvirt is needed here: these requests never reach the hypervisor. The
same behaviour against agents on lab hosts is in tests/system/test_agent.py.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time

import pytest

from engine_lib import pki
from engine_lib.agent.api import ROUTES, Api
from engine_lib.agent.config import AgentConfig
from engine_lib.agent.server import AgentServer, server_context
from engine_lib.broker import AgentClient, client_context, rebuild_error
from engine_lib.protocol.errors import (
    AgentError,
    AgentUnreachable,
    CertificateError,
    InvalidSpec,
    NotFound,
    VmNotFound,
)


def _agent_config(tmp_path, pki_dir, name="agent", addresses=("127.0.0.1",)) -> AgentConfig:
    key, cert = pki.issue(str(pki_dir), name, list(addresses))
    (tmp_path / f"{name}.key").write_bytes(key)
    (tmp_path / f"{name}.pem").write_bytes(cert)
    return AgentConfig(name=name, address="127.0.0.1", port=0, libvirt_uri="test:///default",
                       ca=str(pki_dir / "ca.pem"), cert=str(tmp_path / f"{name}.pem"),
                       key=str(tmp_path / f"{name}.key"), source="test")


@pytest.fixture(scope="module")
def engine_pki(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "pki"
    pki.init_ca(str(path))
    return path


@pytest.fixture(scope="module")
def foreign_pki(tmp_path_factory):
    path = tmp_path_factory.mktemp("foreign") / "pki"
    pki.init_ca(str(path), "some other CA")
    return path


def _serve(config: AgentConfig):
    server = AgentServer(config, server_context(config), Api(config))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def agent(engine_pki, tmp_path_factory):
    server = _serve(_agent_config(tmp_path_factory.mktemp("agent"), engine_pki))
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_openapi_document_lists_every_route(agent, engine_pki):
    doc = AgentClient("127.0.0.1", agent, str(engine_pki)).openapi()
    assert doc["openapi"].startswith("3.")
    served = {(r.method.lower(), "/api/v1" + r.path) for r in ROUTES}
    listed = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == served
    assert doc["paths"]["/api/v1/vms"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["required"] == ["xml"]


def _raw(port, context, method, path, body=None, headers=None):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_malformed_json_is_400_with_the_reason(agent, engine_pki):

    status, doc = _raw(agent, client_context(str(engine_pki)), "POST", "/api/v1/vms",
                       body=b'{"xml": "<domain', headers={"Content-Type": "application/json"})
    assert status == 400
    assert doc["error"]["code"] == "InvalidSpec"
    assert "not valid JSON" in doc["error"]["message"]
    status, doc = _raw(agent, client_context(str(engine_pki)), "POST", "/api/v1/vms",
                       body=b'{"xml": "<domain/>", "force": true}')
    assert status == 400
    assert doc["error"]["details"]["reason"] == "POST /api/v1/vms does not know ['force']"


def test_agent_errors_come_back_as_the_same_class(agent, engine_pki):
    client = AgentClient("127.0.0.1", agent, str(engine_pki))
    with pytest.raises(InvalidSpec) as err:
        client.vm_status("not-a-uuid")
    assert err.value.field == "vm_id"
    assert err.value.details["agent"] == f"127.0.0.1:{agent}"
    with pytest.raises(InvalidSpec, match="timeout: must be a number of seconds"):
        client.shutdown_vm("6f1d2c9e-8a4b-4c1e-9f7a-0123456789ab", timeout=-1)
    with pytest.raises(NotFound, match="API path '/api/v1/nothing' does not exist"):
        client._call("GET", "/nothing")
    with pytest.raises(AgentError, match="PUT is not allowed on /api/v1/vms"):
        client._call("PUT", "/vms")


def test_pause_and_resume_through_the_engines_client(agent, engine_pki):
    """The whole path: broker -> HTTPS -> API -> Hypervisor on libvirt's test driver."""
    import uuid

    from engine_lib.protocol import metadata

    client = AgentClient("127.0.0.1", agent, str(engine_pki))
    vm_id = str(uuid.uuid4())
    xml = (f"<domain type='test'><name>http-{vm_id[:8]}</name><uuid>{vm_id}</uuid>"
           f"<metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'/></metadata>"
           "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")
    client.start_vm(xml)
    try:
        assert client.pause_vm(vm_id)["status"] == "Paused"
        assert client.vm_status(vm_id)["status"] == "Paused"
        assert client.resume_vm(vm_id)["status"] == "Up"
        assert {vm["id"]: vm["status"] for vm in client.list_vms()}[vm_id] == "Up"
        assert client.destroy_vm(vm_id)["status"] == "Down"
    finally:
        import libvirt

        conn = libvirt.open("test:///default")  # the test driver lacks remove's undefine flags
        dom = conn.lookupByUUIDString(vm_id)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()
    with pytest.raises(VmNotFound):
        client.pause_vm(str(uuid.uuid4()))


def test_client_without_certificate_is_refused(agent, engine_pki):
    context = ssl.create_default_context(cafile=str(engine_pki / "ca.pem"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw(agent, context, "GET", "/api/v1/openapi.json")


def test_client_with_certificate_from_another_ca_is_refused(agent, engine_pki, foreign_pki):
    context = ssl.create_default_context(cafile=str(engine_pki / "ca.pem"))
    context.load_cert_chain(foreign_pki / "engine.pem", foreign_pki / "engine.key")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw(agent, context, "GET", "/api/v1/openapi.json")


def test_engine_refuses_an_agent_with_a_foreign_certificate(engine_pki, foreign_pki, tmp_path):
    server = _serve(_agent_config(tmp_path, foreign_pki, "impostor"))
    try:
        client = AgentClient("127.0.0.1", server.server_address[1], str(engine_pki))
        with pytest.raises(CertificateError, match="not signed by the engine CA"):
            client.host_info()
    finally:
        server.shutdown()
        server.server_close()


def test_engine_refuses_an_agent_certificate_for_another_address(engine_pki, tmp_path):
    server = _serve(_agent_config(tmp_path, engine_pki, "h9", addresses=["10.77.0.9"]))
    try:
        client = AgentClient("127.0.0.1", server.server_address[1], str(engine_pki))
        with pytest.raises(CertificateError, match="not issued for '127.0.0.1'"):
            client.host_info()
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_agent_names_address_and_cause(engine_pki):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AgentUnreachable, match=rf"agent 127.0.0.1:{port} unreachable: "
                                               "Connection refused"):
        AgentClient("127.0.0.1", port, str(engine_pki)).host_info()


def test_silent_agent_times_out(engine_pki):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # accepts TCP, never speaks TLS
        port = sock.getsockname()[1]
        with pytest.raises(AgentUnreachable, match="no answer within 0.5 s"):
            AgentClient("127.0.0.1", port, str(engine_pki), timeout=0.5).host_info()


def test_rebuilt_errors_keep_class_message_and_details():
    error = rebuild_error("VmNotFound", "VM 'x' does not exist", {"kind": "VM", "name": "x"})
    assert type(error) is VmNotFound and error.message == "VM 'x' does not exist"
    unknown = rebuild_error("FancyNewError", "boom", {})
    assert type(unknown) is AgentError and unknown.details["code"] == "FancyNewError"


def test_one_request_brings_every_up_vms_guest_agent_answer(agent, engine_pki):
    """GET /guests asks each Up VM's guest agent (the test driver has none to ask: each
    is unavailable with libvirt's reason); a paused VM is not asked."""
    import uuid

    import libvirt

    from engine_lib.protocol import metadata

    client = AgentClient("127.0.0.1", agent, str(engine_pki))
    vm_ids = [str(uuid.uuid4()) for _ in range(3)]
    for vm_id in vm_ids:
        client.start_vm(f"<domain type='test'><name>guests-{vm_id[:8]}</name><uuid>{vm_id}</uuid>"
                        f"<metadata><kestrel:vm xmlns:kestrel='{metadata.NAMESPACE}'/>"
                        "</metadata><memory unit='MiB'>64</memory><os><type>hvm</type></os>"
                        "</domain>")
    try:
        client.pause_vm(vm_ids[2])
        answer = client.guests_info()
        assert answer["guests"] == {}
        assert set(answer["unavailable"]) >= set(vm_ids[:2])
        assert vm_ids[2] not in answer["unavailable"]
        assert all("not supported" in answer["unavailable"][vm_id] for vm_id in vm_ids[:2])
    finally:
        conn = libvirt.open("test:///default")  # the test driver lacks remove's undefine flags
        for vm_id in vm_ids:
            dom = conn.lookupByUUIDString(vm_id)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()


def _server_end_nodelay(client: socket.socket) -> int:
    """TCP_NODELAY of this process's other end of ``client``'s connection."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # not a socket
            continue
        with sock:
            try:
                if sock.type == socket.SOCK_STREAM and \
                        sock.getpeername() == client.getsockname():
                    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:  # a listener, or not TCP
                pass
    raise AssertionError("no server end of the client's connection")


def test_answers_go_out_at_once(agent, engine_pki):
    """TCP_NODELAY on the agent's connections: each answer (headers, then body) would
    otherwise wait out the engine's delayed ACK."""
    conn = http.client.HTTPSConnection("127.0.0.1", agent, timeout=10,
                                       context=client_context(str(engine_pki)))
    try:
        conn.request("GET", "/api/v1/openapi.json")
        assert conn.getresponse().read()
        assert _server_end_nodelay(conn.sock) == 1
    finally:
        conn.close()


def test_a_job_poll_with_wait_answers_when_the_job_ends(engine_pki, tmp_path):
    """GET /jobs/{job}?wait=: a long poll, so the engine learns a job's end at once rather
    than at its next poll; an out-of-range wait names the parameter."""
    server = _serve(_agent_config(tmp_path, engine_pki))
    try:
        client = AgentClient("127.0.0.1", server.server_address[1], str(engine_pki))
        jobs = server.api.jobs
        job = jobs.create("copy", "d/i/v")
        assert client.job(job.id, wait=0.2)["status"] == "running"  # waited, still running
        release = threading.Event()
        jobs.run(job, lambda j: (release.wait(10), {"copied": True})[1])
        threading.Timer(0.3, release.set).start()
        asked = time.monotonic()
        answer = client.job(job.id, wait=10)
        assert (answer["status"], answer["result"]) == ("succeeded", {"copied": True})
        assert time.monotonic() - asked < 5, "the poll waited past the job's end"
        with pytest.raises(InvalidSpec) as err:
            client.job(job.id, wait=11)
        assert err.value.details.get("field") == "wait"
    finally:
        server.shutdown()
        server.server_close()
