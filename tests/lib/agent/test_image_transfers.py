"""Images in and out of a storage domain through the agent's real HTTPS server.

A real AgentServer over mutual TLS on 127.0.0.1, real qemu-img and real files;
the URL imports fetch from HTTP servers (and a silent socket) run here. Every
refusal asserts the error names its field and that the domain holds exactly
what it held before (another volume's bytes untouched).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import threading

import agent_server
import pytest

from engine_lib.agent import image_check, url_fetch
from engine_lib.agent import images as images_module
from engine_lib.agent.api import Api
from engine_lib.broker import client_context

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    with agent_server.serving(tmp_path_factory, storage_domains={},
                              allow_private_urls=True) as (api, port, pki_dir):
        yield Agent(port, client_context(pki_dir), api)


class Agent:
    def __init__(self, port, context, api: Api):
        self.port, self.context, self.api = port, context, api

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                           timeout=30)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = self.connection()
        try:
            data = json.dumps(body).encode() if body is not None else b""
            conn.request(method, "/api/v1" + path, data,
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def put(self, job: str, path) -> tuple[int, dict]:
        """Stream a file as an upload's body, 1 MiB at a time."""
        conn = self.connection()
        try:
            size = os.path.getsize(path)
            conn.putrequest("PUT", f"/api/v1/images/uploads/{job}")
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(size))
            conn.endheaders()
            with open(path, "rb") as handle:
                while piece := handle.read(MIB):
                    conn.send(piece)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def wait(self, job: str) -> dict:
        assert self.api.jobs.get(job).finished.wait(60)
        status, doc = self.call("GET", f"/jobs/{job}")
        assert status == 200
        return doc

    def upload(self, volume: dict, path, image_format: str = "",
               content_type: str = "data") -> dict:
        """The three steps; the finished job's report."""
        status, doc = self.call("POST", "/images/uploads", {
            "volume": volume, "image_format": image_format,
            "length": os.path.getsize(path), "content_type": content_type})
        assert status == 200, doc
        job = doc["job"]
        status, doc = self.put(job, path)
        assert status == 200, doc
        status, doc = self.call("POST", f"/images/uploads/{job}/commit",
                                {"sha256": _sha256(path)})
        assert status == 200, doc
        return self.wait(job)


def _sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _img(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True)


def _info(path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                                     check=True, capture_output=True, text=True).stdout)


def _tree(root) -> dict[str, str]:
    """Every file on the domain with its sha256 (and every directory)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(directory, name), root) + "/"] = ""
        for name in files:
            found[os.path.relpath(os.path.join(directory, name), root)] = \
                _sha256(os.path.join(directory, name))
    return found


@pytest.fixture
def domain(agent, tmp_path):
    """A storage domain 'sd' holding one other volume, which must stay untouched."""
    root = tmp_path / "sd"
    (root / "other").mkdir(parents=True)
    (root / "other" / "vol").write_bytes(os.urandom(64 * 1024))
    agent.api.config.storage_domains.clear()
    agent.api.config.storage_domains["sd"] = str(root)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Source images: random data at the start, zeros after (thin when converted)."""
    src = tmp_path_factory.mktemp("src")
    raw = src / "disk.raw"
    raw.write_bytes(os.urandom(MIB) + b"\0" * (3 * MIB))
    for fmt in ("qcow2", "vmdk"):
        _img("convert", "-f", "raw", "-O", fmt, str(raw), str(src / f"disk.{fmt}"))
    return src


def _vol(volume: str = "vol", fmt: str = "qcow2", size_mib: int = 0) -> dict:
    return {"domain": "sd", "image": "img", "volume": volume, "format": fmt,
            "size_mib": size_mib}


def _same(a, b) -> bool:
    return subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)],
                          capture_output=True).returncode == 0


# -- images in --------------------------------------------------------------------------

def test_a_qcow2_upload_to_a_qcow2_volume_is_linked_into_place_not_copied(agent, domain,
                                                                         images, monkeypatch):
    def no_conversion(*args):
        raise AssertionError("converted")

    monkeypatch.setattr(images_module, "_convert", no_conversion)
    report = agent.upload(_vol(), images / "disk.qcow2", "qcow2")
    assert report["status"] == "succeeded", report
    result = report["result"]
    assert result["detected_format"] == "qcow2" and result["format"] == "qcow2"
    assert result["sha256"] == _sha256(images / "disk.qcow2")
    volume = domain / "img" / "vol"
    assert _sha256(volume) == result["sha256"]  # the very bytes sent: no conversion
    assert oct(volume.stat().st_mode & 0o777) == "0o644"
    assert sorted(os.listdir(domain / "img")) == ["vol"]  # no staging left


def test_a_raw_upload_is_converted_to_a_thin_qcow2_and_grown(agent, domain, images):
    report = agent.upload(_vol(size_mib=8), images / "disk.raw")
    assert report["status"] == "succeeded", report
    result = report["result"]
    assert (result["detected_format"], result["format"], result["size_mib"]) == \
        ("raw", "qcow2", 8)
    info = _info(domain / "img" / "vol")
    assert (info["format"], info["virtual-size"]) == ("qcow2", 8 * MIB)
    assert info["actual-size"] < 3 * MIB  # the zeros were not written
    assert subprocess.run(["qemu-img", "compare", "-U", "-s", str(images / "disk.raw"),
                           str(domain / "img" / "vol")], capture_output=True).returncode == 1
    assert sorted(os.listdir(domain / "img")) == ["vol"]


def test_a_vmdk_upload_becomes_a_raw_volume_with_the_same_content(agent, domain, images):
    report = agent.upload(_vol(fmt="raw"), images / "disk.vmdk", "vmdk")
    assert report["status"] == "succeeded", report
    assert _same(images / "disk.raw", domain / "img" / "vol")


def test_an_upload_is_not_held_to_the_16_mib_json_limit(agent, domain, tmp_path):
    big = tmp_path / "big.raw"
    with open(big, "wb") as handle:
        for _ in range(20):
            handle.write(os.urandom(MIB))
    report = agent.upload(_vol(fmt="raw"), big)
    assert report["status"] == "succeeded", report
    assert report["result"]["sha256"] == _sha256(domain / "img" / "vol") == _sha256(big)


def test_an_iso_upload_is_a_raw_volume(agent, domain, images):
    report = agent.upload(_vol(fmt="raw"), images / "disk.raw", content_type="iso")
    assert report["status"] == "succeeded", report
    assert _sha256(domain / "img" / "vol") == _sha256(images / "disk.raw")


# -- bad input loses nothing ------------------------------------------------------------

def _refused(agent, domain, path, field: str, words: str, image_format: str = "") -> None:
    before = _tree(domain)
    report = agent.upload(_vol(), path, image_format)
    assert report["status"] == "failed", report
    assert report["error"]["details"]["field"] == field, report
    assert words in report["error"]["message"], report
    assert _tree(domain) == before


def test_a_truncated_image_is_refused_and_leaves_nothing(agent, domain, images, tmp_path):
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes((images / "disk.qcow2").read_bytes()[:300 * 1024])
    _refused(agent, domain, cut, "image", "truncated or corrupt")


def test_a_backing_file_pointing_at_etc_shadow_is_refused(agent, domain, tmp_path):
    evil = tmp_path / "evil.qcow2"
    _img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(evil), "1M")
    _refused(agent, domain, evil, "image", "/etc/shadow")


def test_an_external_data_file_is_refused(agent, domain, tmp_path):
    evil = tmp_path / "data.qcow2"
    _img("create", "-f", "qcow2", "-o", f"data_file={domain / 'other' / 'vol'}", str(evil),
         "1M")
    _refused(agent, domain, evil, "image", "external data file")


def test_a_declared_format_that_lies_is_refused(agent, domain, images):
    _refused(agent, domain, images / "disk.qcow2", "image_format",
             "declared raw but is qcow2", "raw")


def test_an_image_larger_than_the_free_space_is_refused_before_any_byte(agent, domain,
                                                                        images, monkeypatch):
    # statvfs reports 10 MiB free on the domain (a tmpfs of that size needs mount rights
    # the unit tests do not assume).
    real = os.statvfs

    class Small:
        def __init__(self, stats):
            self.f_frsize, self.f_bavail = stats.f_frsize, 10 * MIB // stats.f_frsize

    monkeypatch.setattr(image_check.os, "statvfs", lambda path: Small(real(path)))
    before = _tree(domain)
    status, doc = agent.call("POST", "/images/uploads", {"volume": _vol(),
                                                         "length": 20 * MIB})
    assert status == 400
    assert doc["error"]["details"]["field"] == "length"
    assert "20 MiB but the storage domain has 10 MiB free" in doc["error"]["message"]
    assert _tree(domain) == before


def test_a_conversion_larger_than_the_free_space_fails_the_job(agent, domain, images,
                                                               monkeypatch):
    # The 4 MiB raw upload fits; as a fully allocated... qcow2 measure says it needs more.
    real = os.statvfs
    monkeypatch.setattr(image_check, "MARGIN_BYTES", 0)
    calls = []

    class Shrinking:
        def __init__(self, stats):
            calls.append(1)
            left = 5 * MIB if len(calls) == 1 else 512 * 1024
            self.f_frsize, self.f_bavail = stats.f_frsize, left // stats.f_frsize

    monkeypatch.setattr(image_check.os, "statvfs", lambda path: Shrinking(real(path)))
    before = _tree(domain)
    report = agent.upload(_vol(), images / "disk.raw")
    assert report["status"] == "failed"
    assert "converting to qcow2 needs" in report["error"]["message"]
    assert _tree(domain) == before


def test_a_wrong_sha256_fails_the_commit_and_removes_the_staging_file(agent, domain,
                                                                      images):
    before = _tree(domain)
    path = images / "disk.qcow2"
    status, doc = agent.call("POST", "/images/uploads", {
        "volume": _vol(), "length": os.path.getsize(path)})
    job = doc["job"]
    assert agent.put(job, path)[0] == 200
    status, doc = agent.call("POST", f"/images/uploads/{job}/commit", {"sha256": "0" * 64})
    assert status == 400 and doc["error"]["details"]["field"] == "sha256"
    assert agent.wait(job)["status"] == "failed"
    assert _tree(domain) == before


def test_an_upload_interrupted_half_way_fails_its_job_and_leaves_nothing(agent, domain,
                                                                         images):
    before = _tree(domain)
    path = images / "disk.raw"
    length = os.path.getsize(path)
    status, doc = agent.call("POST", "/images/uploads", {"volume": _vol(), "length": length})
    job = doc["job"]
    conn = agent.connection()
    conn.putrequest("PUT", f"/api/v1/images/uploads/{job}")
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    conn.send(path.read_bytes()[:length // 2])
    conn.sock.shutdown(socket.SHUT_WR)  # the client is gone half way
    conn.close()
    report = agent.wait(job)
    assert report["status"] == "failed"
    # (up to half: the close may reset the connection before the agent read it all)
    found = re.search(r"the upload ended after (\d+) of (\d+) bytes", report["error"]["message"])
    assert found and int(found[1]) <= length // 2 and int(found[2]) == length, report
    assert _tree(domain) == before
    assert agent.upload(_vol(), path)["status"] == "succeeded"  # the volume is free again


def test_two_uploads_to_the_same_volume_at_once_the_second_is_a_conflict(agent, domain,
                                                                         images):
    path = images / "disk.qcow2"
    body = {"volume": _vol(), "length": os.path.getsize(path)}
    status, first = agent.call("POST", "/images/uploads", body)
    assert status == 200
    status, doc = agent.call("POST", "/images/uploads", body)
    assert status == 409
    assert "sd/img/vol is busy" in doc["error"]["message"]
    # The first goes on unharmed; then the volume exists and a third is refused as such.
    assert agent.put(first["job"], path)[0] == 200
    assert agent.call("POST", f"/images/uploads/{first['job']}/commit",
                      {"sha256": _sha256(path)})[0] == 200
    assert agent.wait(first["job"])["status"] == "succeeded"
    status, doc = agent.call("POST", "/images/uploads", body)
    assert status == 409 and "exists already" in doc["error"]["message"]


def test_aborting_an_upload_removes_its_staging_file(agent, domain, images):
    before = _tree(domain)
    status, doc = agent.call("POST", "/images/uploads", {"volume": _vol(), "length": 10})
    assert any(".upload-" in name for name in os.listdir(domain / "img"))
    status, doc = agent.call("DELETE", f"/jobs/{doc['job']}")
    assert status == 200 and doc["status"] == "aborted"
    assert _tree(domain) == before


def test_bad_requests_name_their_field(agent, domain):
    cases = [({"volume": _vol(), "length": 0}, "length"),
             ({"volume": _vol(fmt="vmdk"), "length": 1}, "volume.format"),
             ({"volume": {**_vol(), "domain": "nowhere"}, "length": 1}, "volume.domain"),
             ({"volume": {**_vol(), "image": ".."}, "length": 1}, "volume.image"),
             ({"volume": _vol(), "length": 1, "image_format": "vpc"}, "image_format"),
             ({"volume": _vol(), "length": 1, "content_type": "iso"}, "volume.format")]
    for body, field in cases:
        status, doc = agent.call("POST", "/images/uploads", body)
        assert status == 400 and doc["error"]["details"]["field"] == field, (body, doc)
    assert sorted(os.listdir(domain)) == ["other"]


def test_other_routes_keep_the_16_mib_json_limit(agent, domain):
    conn = agent.connection()
    try:
        conn.putrequest("POST", "/api/v1/images/uploads")
        conn.putheader("Content-Length", str(17 * MIB))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
    finally:
        conn.close()


# -- import from a URL ------------------------------------------------------------------

class _Files(http.server.BaseHTTPRequestHandler):
    root = ""
    redirect = ""

    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = os.path.join(self.root, self.path.lstrip("/"))
        if not os.path.isfile(path):
            self.send_error(404)
            return
        data = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def web(images):
    handler = type("Files", (_Files,), {"root": str(images)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _import(agent, url: str, **extra) -> dict:
    status, doc = agent.call("POST", "/images/imports", {"volume": _vol(), "url": url,
                                                         **extra})
    assert status == 200, doc
    return agent.wait(doc["job"])


def test_an_image_is_imported_from_a_url_and_checked(agent, domain, images, web):
    report = _import(agent, f"{web[0]}/disk.vmdk", sha256=_sha256(images / "disk.vmdk"))
    assert report["status"] == "succeeded", report
    assert report["result"]["detected_format"] == "vmdk"
    assert _same(images / "disk.raw", domain / "img" / "vol")


def test_a_url_that_answers_404_fails_clearly_and_leaves_nothing(agent, domain, web):
    before = _tree(domain)
    report = _import(agent, f"{web[0]}/missing.qcow2")
    assert report["status"] == "failed"
    assert report["error"]["details"]["field"] == "url"
    assert "answered 404" in report["error"]["message"]
    assert _tree(domain) == before


def test_a_url_that_never_answers_times_out_and_leaves_nothing(agent, domain):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts (the kernel's backlog) and never says anything
    try:
        before = _tree(domain)
        report = _import(agent, f"http://127.0.0.1:{silent.getsockname()[1]}/x",
                         timeout_s=0.5)
    finally:
        silent.close()
    assert report["status"] == "failed"
    assert "did not answer within 0.5 s" in report["error"]["message"]
    assert _tree(domain) == before


def test_a_wrong_sha256_of_a_download_fails(agent, domain, web):
    before = _tree(domain)
    report = _import(agent, f"{web[0]}/disk.qcow2", sha256="1" * 64)
    assert report["status"] == "failed"
    assert report["error"]["details"]["field"] == "sha256"
    assert _tree(domain) == before


def _refuse_private(agent, monkeypatch) -> None:
    """The default agent.conf: no downloads from the host's own addresses."""
    monkeypatch.setattr(agent.api.images, "config",
                        dataclasses.replace(agent.api.config, allow_private_urls=False))


def test_loopback_link_local_multicast_and_unspecified_urls_are_refused(agent, domain,
                                                                        monkeypatch):
    _refuse_private(agent, monkeypatch)
    for url in ("http://127.0.0.1:1/x", "http://[::1]:1/x", "http://169.254.169.254/x",
                "http://224.0.0.1/x", "http://0.0.0.0:1/x", "http://[::ffff:127.0.0.1]:1/"):
        before = _tree(domain)
        report = _import(agent, url)
        assert report["status"] == "failed"
        assert "the agent does not download from there" in report["error"]["message"], url
        assert _tree(domain) == before


def test_a_redirect_is_checked_again(agent, domain, images, web, monkeypatch):
    # 127.0.0.1 stands for a public server and 127.0.0.2 for the host's own services.
    _refuse_private(agent, monkeypatch)
    monkeypatch.setattr(url_fetch, "_refused",
                        lambda address: "loopback" if address == "127.0.0.2" else None)
    base, handler = web
    handler.redirect = f"http://127.0.0.2:{base.rsplit(':', 1)[1]}/disk.qcow2"
    report = _import(agent, f"{base}/redirect")
    assert report["status"] == "failed"
    assert "resolves to 127.0.0.2, a loopback address" in report["error"]["message"]
    handler.redirect = f"{base}/disk.qcow2"
    assert _import(agent, f"{base}/redirect")["status"] == "succeeded"


@pytest.mark.parametrize("url", ["file:///etc/shadow", "ftp://example.org/x", "http:///x"])
def test_only_http_and_https_urls_are_taken(agent, domain, url):
    status, doc = agent.call("POST", "/images/imports", {"volume": _vol(), "url": url})
    assert status == 400 and doc["error"]["details"]["field"] == "url"
    assert sorted(os.listdir(domain)) == ["other"]


# -- images out and copies --------------------------------------------------------------

def _chain(domain, images) -> tuple[dict, list[dict]]:
    """img/base (raw) <- img/top (qcow2 overlay with a relative backing path)."""
    (domain / "img").mkdir()
    base = domain / "img" / "base"
    base.write_bytes((images / "disk.raw").read_bytes())
    top = domain / "img" / "top"
    _img("create", "-f", "qcow2", "-b", "base", "-F", "raw", str(top))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 2M 64k", str(top)],
                   check=True, capture_output=True)
    return ({"domain": "sd", "image": "img", "volume": "top", "format": "qcow2"},
            [{"image": "img", "volume": "base", "format": "raw"}])


def test_an_export_flattens_the_chain_and_streams_it(agent, domain, images, tmp_path):
    volume, chain = _chain(domain, images)
    status, doc = agent.call("POST", "/images/exports", {"volume": volume, "chain": chain,
                                                         "format": "qcow2"})
    assert status == 200, doc
    job = doc["job"]
    report = agent.wait(job)
    assert report["status"] == "succeeded", report
    staging = [n for n in os.listdir(domain / "img") if ".export-" in n]
    assert len(staging) == 1
    assert oct(os.stat(domain / "img" / staging[0]).st_mode & 0o777) == "0o600"
    conn = agent.connection()
    out = tmp_path / "out.qcow2"
    try:
        conn.request("GET", f"/api/v1/images/exports/{job}")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/octet-stream"
        with open(out, "wb") as handle:
            while piece := response.read(MIB):
                handle.write(piece)
    finally:
        conn.close()
    assert out.stat().st_size == report["result"]["length"]
    assert _sha256(out) == report["result"]["sha256"]
    assert "backing-filename" not in _info(out)
    assert _same(domain / "img" / "top", out)
    assert agent.call("DELETE", f"/jobs/{job}")[1]["forgotten"] is True
    assert sorted(os.listdir(domain / "img")) == ["base", "top"]


def test_a_copy_is_flattened_and_linked_into_place(agent, domain, images):
    volume, chain = _chain(domain, images)
    target = {"domain": "sd", "image": "tmpl", "volume": "t1", "format": "qcow2",
              "size_mib": 16}
    status, doc = agent.call("POST", "/volumes/copy", {"source": volume, "chain": chain,
                                                      "target": target})
    assert status == 200, doc
    report = agent.wait(doc["job"])
    assert report["status"] == "succeeded", report
    copy = domain / "tmpl" / "t1"
    info = _info(copy)
    assert "backing-filename" not in info and info["virtual-size"] == 16 * MIB
    assert subprocess.run(["qemu-img", "compare", "-U", "-s", str(domain / "img" / "top"),
                           str(copy)], capture_output=True).returncode == 1  # bigger only
    assert os.listdir(domain / "tmpl") == ["t1"]


def test_a_copy_with_a_missing_parent_fails_and_leaves_nothing(agent, domain, images):
    volume, chain = _chain(domain, images)
    before = _tree(domain)
    status, doc = agent.call("POST", "/volumes/copy", {
        "source": volume, "chain": [{**chain[0], "volume": "gone"}],
        "target": {"domain": "sd", "image": "tmpl", "volume": "t1", "format": "raw"}})
    assert status == 400 and doc["error"]["details"]["field"] == "chain[0]"
    assert _tree(domain) == before


def test_the_openapi_document_describes_the_streamed_routes(agent):
    status, doc = agent.call("GET", "/openapi.json")
    put = doc["paths"]["/api/v1/images/uploads/{job}"]["put"]
    assert "application/octet-stream" in put["requestBody"]["content"]
    get = doc["paths"]["/api/v1/images/exports/{job}"]["get"]
    assert "application/octet-stream" in get["responses"]["200"]["content"]
