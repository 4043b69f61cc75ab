"""Disk content through the served engine API over TLS, to a REAL agent (its HTTPS server,
jobs and qemu-img checks) in this process: uploads and downloads with the remote client,
an unchanged disk answered without its bytes, a cancelled upload, bodies that lie about
their length, and the memory an upload takes."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import ssl
import subprocess
import time
from urllib.parse import urlencode, urlsplit

import agent_server
import pytest
from api_server import ServedApi, served_api
from conftest import FakeAgent

from engine_lib.aaa import tokens
from engine_lib.broker import AgentClient
from engine_lib.client.remote import RemoteEngine
from engine_lib.model import ApiJob, ApiToken, Host, Permission, User, Vm, Volume
from engine_lib.protocol.errors import InvalidSpec, PermissionDenied
from engine_lib.services import volume_jobs

MIB = 1 << 20


def _mint(self: ServedApi, role: str, object_type: str = "system", object_name: str = "",
          *, token_role: str = "") -> str:
    """A token of a new user granted ``role`` on the object (rows written directly)."""
    token_id, secret, text = tokens.new_token()
    with self.engine.store.transaction() as session:
        user = User(name=f"u-{token_id[:8]}-{role.lower()}")
        session.add(user)
        session.flush()
        object_id = ""
        if object_type == "vm":
            object_id = session.query(Vm).filter_by(name=object_name).one().id
        session.add(Permission(principal_type="user", principal_id=user.id, role=role,
                               object_type=object_type, object_id=object_id))
        session.add(ApiToken(id=token_id, user_id=user.id, name="test",
                             secret_sha256=tokens.secret_digest(secret), role=token_role))
    return text


@pytest.fixture(scope="module")
def real_agent(tmp_path_factory):
    with agent_server.serving(tmp_path_factory, storage_domains={}) as served:
        yield served


@pytest.fixture(scope="module")
def api(tmp_path_factory, real_agent):
    agent_api, port, pki_dir = real_agent
    use = {"agent": lambda address, port: FakeAgent("h1")}  # registering h1: its facts
    root = tmp_path_factory.mktemp("sd")
    agent_api.config.storage_domains["sd"] = str(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ServedApi, "token_for", _mint)
        patch.setattr(volume_jobs, "POLL_INTERVAL", 0.05)
        with served_api(tmp_path_factory,
                        agent_factory=lambda a, p: use["agent"](a, p)) as served:
            engine = served.engine
            engine.config = dataclasses.replace(engine.config, file_domain_roots=(str(root),))
            engine.clusters.ensure("c1", virt_type="qemu")
            engine.hosts.ensure("h1", address="127.0.0.1", cluster="c1")
            use["agent"] = lambda a, p: AgentClient("127.0.0.1", port, pki_dir)
            engine.storage_domains.ensure("sd", path=str(root), clusters=["c1"])
            with engine.store.transaction() as session:
                host = session.query(Host).one()
                host.status = "Up"
                host.storage_domains = [{"name": "sd", "path": str(root), "available": True,
                                         "free_mib": 100000}]
            served.root = root  # type: ignore[attr-defined]
            yield served


@pytest.fixture
def remote(api):
    with RemoteEngine.connect(api.url, token=api.token_for("ClusterAdmin"),
                              ca_file=api.ca_file) as engine:
        yield engine


def _qcow2(tmp_path, mib: int, name: str = "src") -> str:
    raw = tmp_path / f"{name}.raw"
    with open(raw, "wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                    str(tmp_path / f"{name}.qcow2")], check=True)
    raw.unlink()
    return str(tmp_path / f"{name}.qcow2")


def _sha(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while piece := stream.read(MIB):
            digest.update(piece)
    return digest.hexdigest()


def _files(api) -> list[str]:
    return sorted(str(p.relative_to(api.root)) for p in api.root.rglob("*") if p.is_file())


def _volumes(api) -> list[tuple[str, str]]:
    with api.engine.store.transaction(commit=False) as session:
        return sorted((v.name, v.status) for v in session.query(Volume))


def _jobs(api, operation: str) -> list[ApiJob]:
    with api.engine.store.transaction(commit=False) as session:
        jobs = session.query(ApiJob).filter_by(operation=operation).order_by(ApiJob.created)
        return [dataclasses.replace(_Job(), **{k: getattr(j, k) for k in _Job.__annotations__})
                for j in jobs]


@dataclasses.dataclass
class _Job:
    id: str = ""
    status: str = ""
    progress: int = 0
    phase: str = ""
    error: dict | None = None


class _Raw:
    """One request written by hand over TLS: to send a body in pieces, or a lying one."""

    def __init__(self, api, token: str, path: str, query: dict, length: int):
        url = urlsplit(api.url)
        self.conn = http.client.HTTPSConnection(
            url.hostname, url.port, timeout=30,
            context=ssl.create_default_context(cafile=api.ca_file))
        self.conn.putrequest("PUT", f"{url.path}{path}?{urlencode(query)}")
        self.conn.putheader("Authorization", f"Bearer {token}")
        self.conn.putheader("Content-Length", str(length))
        self.conn.putheader("Content-Type", "application/octet-stream")
        self.conn.endheaders()

    def answer(self) -> tuple[int, dict]:
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def _until(condition, what: str, timeout: float = 20):
    """Poll observable state (the job's row) until it holds."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


# -- the round trip -----------------------------------------------------------------------------


def test_upload_then_download_through_the_api_with_the_same_sha256(api, remote, tmp_path):
    image = _qcow2(tmp_path, 6)
    outcome = remote.images.upload("up", storage_domain="sd", upload_image_path=image)
    assert outcome.changed and outcome.entity["status"] == "ok"
    assert outcome.entity["sha256"] == _sha(image)
    job = _jobs(api, "images.upload")[-1]
    assert (job.status, job.progress) == ("succeeded", 100)
    out = tmp_path / "out.qcow2"
    got = remote.images.download("up", str(out))
    assert got.changed and _sha(out) == _sha(image) == got.entity["sha256"]
    assert got.entity["download_image_path"] == str(out)
    job = _until(lambda: next((j for j in _jobs(api, "images.download")
                               if j.status != "running"), None), "the download job's end")
    assert (job.status, job.progress) == ("succeeded", 100)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]
    # Both again: unchanged, and no byte crosses (no job, the file untouched).
    before, mtime = len(_jobs(api, "images.upload")), out.stat().st_mtime_ns
    assert not remote.images.upload("up", storage_domain="sd", upload_image_path=image).changed
    assert not remote.images.download("up", str(out)).changed
    assert len(_jobs(api, "images.upload")) == before and out.stat().st_mtime_ns == mtime
    # check_mode asks, changes nothing.
    other = _qcow2(tmp_path, 1, "other")
    assert remote.images.upload("other", storage_domain="sd", upload_image_path=other,
                                check_mode=True).changed
    assert ("other", "ok") not in _volumes(api)


def test_a_vm_disk_up_and_down_needs_disk_transfer_on_the_vm(api, tmp_path):
    api.engine.vms.ensure({"name": "vm1", "cluster": "c1", "memory": "256MiB"})
    image = _qcow2(tmp_path, 2)
    with RemoteEngine.connect(api.url, token=api.token_for("ReadOnly"),
                              ca_file=api.ca_file) as reader:
        with pytest.raises(PermissionDenied, match="vm.disk_transfer"):
            reader.images.upload_vm_disk("vm1", "data", settings={"storage_domain": "sd"},
                                         upload_image_path=image)
    with RemoteEngine.connect(api.url, token=api.token_for("UserVmManager", "vm", "vm1"),
                              ca_file=api.ca_file) as owner:
        up = owner.images.upload_vm_disk("vm1", "data", settings={"storage_domain": "sd"},
                                         upload_image_path=image)
        assert up.changed and up.entity["sha256"] == _sha(image)
        got = owner.images.download_vm_disk("vm1", "data", str(tmp_path / "vm1.qcow2"))
        assert _sha(tmp_path / "vm1.qcow2") == _sha(image) == got.entity["sha256"]


# -- cancel and lying bodies ----------------------------------------------------------------------


def test_a_cancelled_upload_leaves_no_row_and_no_staging_file(api, tmp_path):
    token = api.token_for("ClusterAdmin")
    before_files, before_rows = _files(api), _volumes(api)
    raw = _Raw(api, token, "/disks/cancelled/content",
               {"storage_domain": "sd", "image_checksum": "sha256:" + "0" * 64}, 32 * MIB)
    raw.conn.send(os.urandom(2 * MIB))  # a piece reaches the agent's staging file
    job = _until(lambda: next((j for j in _jobs(api, "images.upload")
                               if j.status == "running" and j.progress > 0), None),
                 "the upload's progress")
    assert job.phase == "uploading" and _volumes(api) == sorted(
        before_rows + [("cancelled", "locked")])
    with RemoteEngine.connect(api.url, token=token, ca_file=api.ca_file) as same_user:
        status, cancelled = same_user.http.json("DELETE", f"/jobs/{job.id}")
    assert status == 202 and cancelled["id"] == job.id
    status, body = raw.answer()  # the rest of the body is never sent
    assert (status, body["code"]) == (409, "Cancelled"), body
    assert _jobs(api, "images.upload")[-1].status == "cancelled"
    assert _volumes(api) == before_rows and _files(api) == before_files


@pytest.mark.parametrize("declared,sent", [(3 * MIB, 2 * MIB), (MIB, 2 * MIB)])
def test_a_body_longer_or_shorter_than_declared_is_400_and_leaves_nothing(api, declared,
                                                                         sent):
    token = api.token_for("ClusterAdmin")
    before_files, before_rows = _files(api), _volumes(api)
    raw = _Raw(api, token, "/disks/liar/content",
               {"storage_domain": "sd", "image_checksum": "sha256:" + "0" * 64,
                "upload_length": declared}, sent)
    status, body = raw.answer()  # refused before the body is read
    assert (status, body["code"], body["details"]["field"]) == (400, "InvalidSpec",
                                                                  "upload_length"), body
    assert _volumes(api) == before_rows and _files(api) == before_files


def test_a_body_cut_short_fails_the_job_and_leaves_nothing(api):
    before_files, before_rows = _files(api), _volumes(api)
    raw = _Raw(api, api.token_for("ClusterAdmin"), "/disks/short/content",
               {"storage_domain": "sd", "image_checksum": "sha256:" + "0" * 64}, 4 * MIB)
    raw.conn.send(os.urandom(MIB + 5))
    _until(lambda: any(j.status == "running" and j.progress > 0
                       for j in _jobs(api, "images.upload")), "the upload's progress")
    raw.conn.close()  # the client dies mid-body
    job = _until(lambda: next((j for j in _jobs(api, "images.upload")
                               if j.status == "failed"), None), "the job's end")
    assert job.error["code"] == "InvalidSpec" and job.error["details"]["field"] == \
        "Content-Length", job.error
    assert _volumes(api) == before_rows and _files(api) == before_files


@pytest.mark.parametrize("query,headers,field", [
    ({"storage_domain": "sd"}, {"Content-Length": "10"}, "image_checksum"),
    ({"storage_domain": "sd", "image_checksum": "sha256:" + "0" * 64},
     {"Transfer-Encoding": "chunked"}, "Content-Length"),
    ({"storage_domain": "sd"}, {}, "Content-Length"),
    ({"storage_domain": "sd", "check_mode": "true"}, {"Content-Length": "10"},
     "Content-Length"),
])
def test_an_upload_without_what_it_needs_is_400_naming_it(api, query, headers, field):
    url = urlsplit(api.url)
    conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=30,
                                       context=ssl.create_default_context(cafile=api.ca_file))
    conn.putrequest("PUT", f"{url.path}/disks/x/content?{urlencode(query)}")
    conn.putheader("Authorization", f"Bearer {api.admin_token}")
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert (response.status, body["details"].get("field")) == (400, field), body
    assert ("x", "locked") not in _volumes(api)


def test_the_openapi_document_marks_the_streams(api, remote):
    ops = remote.operations
    assert ops["images.upload"].stream == "upload"
    assert ops["images.upload"].path_param == "upload_image_path"
    assert ops["images.upload_vm_disk"].args == ("vm", "name")
    assert ops["images.download"].stream == "download" and ops["images.download"].path_param \
        == "path" and ops["images.download"].args == ("name", "path")
    with pytest.raises(InvalidSpec, match="download_image_path"):
        remote.images.download("up", "/nonexistent/dir/out.qcow2")


# -- memory ---------------------------------------------------------------------------------------


def _hwm_mib() -> float:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmHWM"].split()[0]) / 1024


def test_an_upload_takes_bounded_memory(api, remote, tmp_path):
    """Client, API server and agent all run in this process: its peak RSS while 128 MiB
    go through all three must grow by far less than the image (measured: see report)."""
    image = _qcow2(tmp_path, 128, "big")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak to the current RSS
    before = _hwm_mib()
    outcome = remote.images.upload("big", storage_domain="sd", upload_image_path=image)
    grown = _hwm_mib() - before
    print(f"peak RSS grew {grown:.1f} MiB for a {os.path.getsize(image) / MIB:.0f} MiB upload")
    assert outcome.entity["sha256"] == _sha(image)
    assert grown < 48, f"peak RSS grew {grown:.1f} MiB"
