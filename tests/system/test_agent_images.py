"""Images through real lab agents: an upload over mutual TLS onto the shared domain, an
import from the lab's own web server, an export read back from another host.

The agents run with the default agent.conf: a URL on the lab bridge (10.77.0.254) is
an ordinary address to them, while loopback stays refused.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import subprocess
import threading
import time
import uuid

import pytest
from agent_fixtures import AGENT_PORT

from engine_lib.broker import client_context
from kestrel_lab import hosts as lab_hosts
from kestrel_lab.network import GATEWAY

pytestmark = pytest.mark.lab

MIB = 1024 * 1024


def _call(agent, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPSConnection(agent.address, AGENT_PORT,
                                       context=client_context(agent.pki_dir), timeout=60)
    try:
        conn.request(method, "/api/v1" + path, json.dumps(body).encode() if body else b"",
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _wait(agent, job: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:  # the engine polls the same way
        status, report = _call(agent, "GET", f"/jobs/{job}")
        assert status == 200, report
        if report["status"] != "running" or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


def _sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    where = tmp_path_factory.mktemp("images")
    raw = where / "disk.raw"
    raw.write_bytes(os.urandom(2 * MIB) + b"\0" * (6 * MIB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                    str(where / "disk.qcow2")], check=True)
    return where


def _volume(fmt: str = "qcow2") -> dict:
    return {"domain": "data", "image": str(uuid.uuid4()), "volume": str(uuid.uuid4()),
            "format": fmt}


def test_upload_on_one_host_export_on_another(agents, image, tmp_path):
    first, second = agents[0], agents[1]
    path = image / "disk.qcow2"
    volume = {**_volume(), "size_mib": 16}
    status, doc = _call(first, "POST", "/images/uploads",
                        {"volume": volume, "length": path.stat().st_size})
    assert status == 200, doc
    job = doc["job"]
    conn = http.client.HTTPSConnection(first.address, AGENT_PORT,
                                       context=client_context(first.pki_dir), timeout=60)
    conn.putrequest("PUT", f"/api/v1/images/uploads/{job}")
    conn.putheader("Content-Length", str(path.stat().st_size))
    conn.endheaders()
    with open(path, "rb") as handle:
        while piece := handle.read(MIB):
            conn.send(piece)
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["sha256"] == _sha256(path)
    conn.close()
    assert _call(first, "POST", f"/images/uploads/{job}/commit",
                 {"sha256": _sha256(path)})[0] == 200
    report = _wait(first, job)
    assert report["status"] == "succeeded", report
    assert report["result"]["size_mib"] == 16

    # The shared domain: the second host exports it as raw.
    source = {k: volume[k] for k in ("domain", "image", "volume", "format")}
    status, doc = _call(second, "POST", "/images/exports", {"volume": source,
                                                           "format": "raw"})
    assert status == 200, doc
    report = _wait(second, doc["job"])
    assert report["status"] == "succeeded", report
    conn = http.client.HTTPSConnection(second.address, AGENT_PORT,
                                       context=client_context(second.pki_dir), timeout=60)
    out = tmp_path / "out.raw"
    conn.request("GET", f"/api/v1/images/exports/{doc['job']}")
    response = conn.getresponse()
    with open(out, "wb") as handle:
        while piece := response.read(MIB):
            handle.write(piece)
    conn.close()
    assert _sha256(out) == report["result"]["sha256"]
    assert subprocess.run(["qemu-img", "compare", "-s", "-f", "raw", "-F", "raw",
                           str(image / "disk.raw"), str(out)]).returncode == 1  # grown
    assert _call(second, "DELETE", f"/jobs/{doc['job']}")[1]["forgotten"] is True
    data = lab_hosts.shared_dir(first.host.state_dir, "data")
    assert os.listdir(os.path.join(data, volume["image"])) == [volume["volume"]]


@pytest.fixture
def web(image):
    handler = type("Files", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda *args: None})
    server = http.server.ThreadingHTTPServer(
        (GATEWAY, 0), lambda *args: handler(*args, directory=str(image)))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://{GATEWAY}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_import_from_the_lab_web_server_and_loopback_refused(agents, image, web):
    agent = agents[0]
    volume = _volume("raw")
    status, doc = _call(agent, "POST", "/images/imports", {
        "volume": volume, "url": f"{web}/disk.qcow2", "sha256": _sha256(image / "disk.qcow2"),
        "image_format": "qcow2"})
    assert status == 200, doc
    report = _wait(agent, doc["job"])
    assert report["status"] == "succeeded", report
    assert report["result"]["detected_format"] == "qcow2"

    status, doc = _call(agent, "POST", "/images/imports", {
        "volume": _volume(), "url": "http://127.0.0.1:54321/"})
    report = _wait(agent, doc["job"])
    assert report["status"] == "failed"
    assert "loopback address" in report["error"]["message"]
    status, doc = _call(agent, "POST", "/images/imports", {
        "volume": _volume(), "url": f"{web}/missing.qcow2"})
    report = _wait(agent, doc["job"])
    assert report["status"] == "failed" and "answered 404" in report["error"]["message"]
