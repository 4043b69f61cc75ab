"""The engine's uploads and downloads through the REAL agent (its HTTPS server, jobs,
qemu-img checks) in this process: the wire between broker and agent, end to end."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess

import agent_server
import pytest

from engine_lib.broker import AgentClient
from engine_lib.engine import Engine
from engine_lib.model import Host, Volume
from engine_lib.protocol.errors import Cancelled, InvalidSpec, KestrelError
from engine_lib.services import job_context, volume_jobs

MIB = 1 << 20


@pytest.fixture(scope="module")
def real_agent(tmp_path_factory):
    with agent_server.serving(tmp_path_factory, storage_domains={},
                              allow_private_urls=True) as (api, port, pki_dir):
        yield api, port, pki_dir


@pytest.fixture
def setup(real_agent, tmp_path, monkeypatch):
    """An engine (SQLite) whose host h1 is the real agent, domain 'sd' with one other file."""
    monkeypatch.setattr(volume_jobs, "POLL_INTERVAL", 0.05)
    api, port, pki_dir = real_agent
    root = tmp_path / "sd"
    (root / "other").mkdir(parents=True)
    (root / "other" / "vol").write_bytes(os.urandom(64 << 10))
    api.config.storage_domains.clear()
    api.config.storage_domains["sd"] = str(root)
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "engine.conf").write_text(f"[storage]\nfile_domain_roots = {tmp_path}\n")
    engine = Engine.open(engine_dir=str(tmp_path / "engine"), db_url=f"sqlite:///{tmp_path}/e.db",
                         agent_factory=lambda a, p: AgentClient("127.0.0.1", port, str(pki_dir)))
    engine.clusters.ensure("c1", virt_type="qemu")
    from conftest import FakeAgent  # registering the host: its facts, then the real agent
    engine.agent = lambda a, p: FakeAgent("h1")
    engine.hosts.ensure("h1", address="127.0.0.1", cluster="c1")
    engine.agent = lambda a, p: AgentClient("127.0.0.1", port, str(pki_dir))
    engine.storage_domains.ensure("sd", path=str(root), clusters=["c1"])
    with engine.store.transaction() as session:
        host = session.query(Host).one()
        host.status = "Up"
        host.storage_domains = [{"name": "sd", "path": str(root), "available": True,
                                 "free_mib": 100000}]
    yield engine, root
    engine.close()


def _img(*argv):
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _rows(engine):
    with engine.store.transaction(commit=False) as session:
        return [(v.name, v.status) for v in session.query(Volume)]


def test_upload_and_download_through_the_real_agent(setup, tmp_path):
    engine, root = setup
    raw = tmp_path / "src.raw"
    raw.write_bytes(os.urandom(3 * MIB) + b"\0" * (2 * MIB))
    _img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_path / "src.qcow2"))
    seen = []
    disk = engine.images.upload("base", storage_domain="sd",
                                upload_image_path=str(tmp_path / "src.qcow2"),
                                image_format="qcow2", progress=seen.append).entity
    assert disk["status"] == "ok" and disk["sha256"] == _sha(tmp_path / "src.qcow2")
    assert {p["phase"] for p in seen} >= {"uploading"}
    out = tmp_path / "out.raw"
    engine.images.download("base", str(out), fmt="raw")
    assert subprocess.run(["qemu-img", "compare", str(raw), str(out)]).returncode == 0
    assert set(os.listdir(tmp_path / "sd")) == {"other", disk["image_id"]}


def test_a_backing_file_and_a_lying_format_are_refused_naming_options(setup, tmp_path):
    engine, root = setup
    before = _sha(root / "other" / "vol")
    _img("create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(tmp_path / "evil.qcow2"))
    with pytest.raises(InvalidSpec) as caught:
        engine.images.upload("evil", storage_domain="sd",
                             upload_image_path=str(tmp_path / "evil.qcow2"))
    assert caught.value.field == "upload_image_path" and "backing" in caught.value.reason
    _img("create", "-f", "qcow2", str(tmp_path / "q.qcow2"), "1M")
    with pytest.raises(InvalidSpec) as caught:
        engine.images.upload("liar", storage_domain="sd",
                             upload_image_path=str(tmp_path / "q.qcow2"), image_format="raw")
    assert caught.value.field == "image_format"
    assert _rows(engine) == [] and os.listdir(root) == ["other"]
    assert _sha(root / "other" / "vol") == before


def test_a_truncated_image_is_refused(setup, tmp_path):
    engine, root = setup
    raw = tmp_path / "r.raw"
    raw.write_bytes(os.urandom(2 * MIB))
    _img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_path / "t.qcow2"))
    data = (tmp_path / "t.qcow2").read_bytes()
    (tmp_path / "t.qcow2").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidSpec) as caught:
        engine.images.upload("t", storage_domain="sd", upload_image_path=str(tmp_path / "t.qcow2"))
    assert caught.value.field in ("upload_image_path", "image_format"), caught.value
    assert _rows(engine) == [] and os.listdir(root) == ["other"]


def test_a_url_that_is_missing_names_the_url_option(setup):
    engine, root = setup
    with pytest.raises((InvalidSpec, KestrelError)) as caught:
        engine.images.upload("u", storage_domain="sd",
                             upload_image_url="http://127.0.0.1:9/missing.qcow2", timeout=5)
    assert "upload_image_url" in str(caught.value) or \
        getattr(caught.value, "field", "") == "upload_image_url", caught.value
    assert _rows(engine) == [] and os.listdir(root) == ["other"]


class _Job:
    """A job handle (services.job_context) whose user cancels once progress in
    ``cancel_in_phase`` is reported (never when None)."""

    def __init__(self, cancel_in_phase: str | None = None):
        self.seen: list[tuple[int, str]] = []
        self.cancel_in_phase = cancel_in_phase

    def progress(self, percent, phase=""):
        self.seen.append((percent, phase))

    def cancel_requested(self):
        return any(phase == self.cancel_in_phase for _, phase in self.seen)


def _qcow2(tmp_path, mib):
    raw = tmp_path / "s.raw"
    raw.write_bytes(os.urandom(mib * MIB))
    _img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_path / "s.qcow2"))
    return tmp_path / "s.qcow2"


def test_a_stream_uploads_and_downloads_with_the_jobs_progress(setup, tmp_path):
    engine, root = setup
    image = _qcow2(tmp_path, 3)
    sha = _sha(image)
    job = _Job()
    with open(image, "rb") as stream, job_context.running(job):
        disk = engine.images.upload("s", storage_domain="sd", upload_stream=stream,
                                    upload_length=image.stat().st_size,
                                    image_checksum=f"sha256:{sha}").entity
    assert disk["status"] == "ok" and disk["sha256"] == sha
    uploading = [p for p, phase in job.seen if phase == "uploading"]
    assert uploading == sorted(uploading) and len(uploading) >= 3 and uploading[-1] == 100
    # Unchanged: compared by the checksum, no byte read.
    assert not engine.images.upload("s", storage_domain="sd", upload_stream=io.BytesIO(),
                                    upload_length=1, image_checksum=f"sha256:{sha}").changed
    out, job = io.BytesIO(), _Job()
    with job_context.running(job):
        got = engine.images.download("s", stream=out).entity
    assert hashlib.sha256(out.getvalue()).hexdigest() == got["sha256"] == sha
    assert got["length"] == len(out.getvalue()) and job.seen[-1] == (100, "downloading")


def test_a_stream_needs_its_length_and_a_checksum_to_compare(setup):
    engine, root = setup
    with pytest.raises(InvalidSpec) as caught:
        engine.images.upload("s", storage_domain="sd", upload_stream=io.BytesIO(b"x"))
    assert caught.value.field == "upload_length"


@pytest.mark.parametrize("phase", ["uploading", "downloading"])
def test_a_cancel_between_pieces_leaves_no_row_and_no_staging_file(setup, tmp_path, phase):
    engine, root = setup
    image = _qcow2(tmp_path, 6)
    if phase == "downloading":
        engine.images.upload("d", storage_domain="sd", upload_image_path=str(image))
    before = _rows(engine)
    job = _Job(cancel_in_phase=phase)
    with job_context.running(job), pytest.raises(Cancelled):
        if phase == "uploading":
            engine.images.upload("d", storage_domain="sd", upload_image_path=str(image))
        else:
            engine.images.download("d", str(tmp_path / "out.qcow2"))
    assert [p for p, seen in job.seen if seen == phase] == [job.seen[-1][0]]  # one piece
    assert _rows(engine) == before
    # The agent's job was aborted: its staging file (upload) or export copy is gone.
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == sorted(["other/vol"] + [f"{v['image_id']}/{v['volume_id']}"
                                           for v in engine.images.list()])
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]
