"""Uploads and downloads of disk images: the engine's side, against FakeAgent's jobs."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from conftest import FakeAgent

from engine_lib.model import Volume
from engine_lib.protocol.errors import Conflict, InvalidSpec, KestrelError
from engine_lib.services import volume_jobs

IMAGE = b"QFI\xfb" + b"\0" * 4092 + b"data" * 1024


@pytest.fixture(autouse=True)
def no_poll_wait(monkeypatch):
    monkeypatch.setattr(volume_jobs, "POLL_INTERVAL", 0)


@pytest.fixture
def agent(engine, cluster, agents):
    """h1, Up, with the 'data' domain available and 1 GiB free."""
    agent = agents["10.0.0.1"] = FakeAgent("h1")
    info = agent.host_info
    agent.free_mib = 1024
    agent.host_info = lambda timeout=None: {**info(), "storage_domains": [
        {"name": "data", "path": "/srv/data", "available": True, "free_mib": agent.free_mib}]}
    engine.hosts.ensure("h1", address="10.0.0.1", cluster=cluster)
    engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    return agent


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.qcow2"
    path.write_bytes(IMAGE)
    return str(path)


def rows(engine) -> list[Volume]:
    with engine.store.transaction(commit=False) as session:
        found = list(session.query(Volume).all())
        session.expunge_all()
        return found


def test_an_upload_registers_an_ok_volume_with_its_sha256_and_reports_progress(engine, agent,
                                                                               image):
    agent.job_polls = 2
    seen = []
    outcome = engine.images.upload("base", storage_domain="data", upload_image_path=image,
                                   image_format="qcow2", progress=seen.append)
    disk = outcome.entity
    assert outcome.changed and disk["status"] == "ok" and disk["format"] == "qcow2"
    assert disk["sha256"] == hashlib.sha256(IMAGE).hexdigest()
    assert disk["transferred_bytes"] == len(IMAGE) and disk["upload_seconds"] >= 0
    assert agent.files[f"data/{disk['image_id']}/{disk['volume_id']}"] == IMAGE
    assert [p["phase"] for p in seen][0] == "uploading" and seen[-1]["progress"] == 100
    assert agent.jobs == {}  # the job was forgotten
    assert engine.images.list() == [{k: v for k, v in disk.items()
                                     if k not in ("transferred_bytes", "upload_seconds")}]
    # Same content again: nothing to do.
    again = engine.images.upload("base", storage_domain="data", upload_image_path=image)
    assert again.changed is False and again.entity["volume_id"] == disk["volume_id"]


def test_other_content_is_refused_without_force_and_replaces_with_it(engine, agent, image,
                                                                     tmp_path):
    first = engine.images.upload("base", storage_domain="data", upload_image_path=image).entity
    other = tmp_path / "other.img"
    other.write_bytes(b"other" * 100)
    with pytest.raises(Conflict, match="disk 'base' exists with other content.*force"):
        engine.images.upload("base", storage_domain="data", upload_image_path=str(other))
    replaced = engine.images.upload("base", storage_domain="data", upload_image_path=str(other),
                                    force=True).entity
    assert replaced["volume_id"] != first["volume_id"]
    assert [v.id for v in rows(engine)] == [replaced["volume_id"]]
    assert agent.deleted_volumes == [{"domain": "data", "image": first["image_id"],
                                      "volume": first["volume_id"]}]


def test_check_mode_uploads_nothing(engine, agent, image):
    outcome = engine.images.upload("base", storage_domain="data", upload_image_path=image,
                                   check_mode=True)
    assert outcome.changed and outcome.entity["would_upload"] == image
    assert rows(engine) == [] and getattr(agent, "jobs", {}) == {}


def test_a_second_upload_to_a_locked_disk_is_a_conflict_naming_it(engine, agent, image):
    seen = []

    def second(progress):
        if progress["phase"] == "uploading" and not seen:
            seen.append(progress)
            with pytest.raises(Conflict, match="disk 'base' is being uploaded"):
                engine.images.upload("base", storage_domain="data", upload_image_path=image)
    engine.images.upload("base", storage_domain="data", upload_image_path=image,
                         progress=second)
    assert seen and len(rows(engine)) == 1


@pytest.mark.parametrize("field,option", [("image_format", "image_format"),
                                          ("image", "upload_image_path")])
def test_a_refused_image_names_the_option_and_leaves_no_row(engine, agent, image, field,
                                                            option):
    agent.check_errors = lambda data, request: InvalidSpec(field, "has a backing file")
    with pytest.raises(InvalidSpec) as caught:
        engine.images.upload("base", storage_domain="data", upload_image_path=image)
    assert caught.value.field == option and "backing file" in caught.value.reason
    assert rows(engine) == [] and agent.jobs == {}


def test_an_image_larger_than_the_free_space_is_refused_up_front(engine, agent, tmp_path):
    from engine_lib.model import Host
    with engine.store.transaction() as session:  # as the next heartbeat records it
        host = session.query(Host).one()
        host.storage_domains = [{**host.storage_domains[0], "free_mib": 1}]
    big = tmp_path / "big.raw"
    big.write_bytes(b"\0" * (2 << 20))
    with pytest.raises(InvalidSpec, match="upload_image_path: the image is 2097152 bytes.*1 "
                                          "MiB free"):
        engine.images.upload("big", storage_domain="data", upload_image_path=str(big))
    assert rows(engine) == [] and getattr(agent, "jobs", {}) == {}


def test_url_imports_and_their_failures(engine, agent):
    agent.urls = {"http://images.example/a.qcow2": IMAGE}
    disk = engine.images.upload("a", storage_domain="data",
                                upload_image_url="http://images.example/a.qcow2",
                                image_checksum="sha256:" + hashlib.sha256(IMAGE).hexdigest()
                                ).entity
    assert disk["sha256"] == hashlib.sha256(IMAGE).hexdigest()
    with pytest.raises(InvalidSpec, match="upload_image_url: .*404"):
        engine.images.upload("b", storage_domain="data",
                             upload_image_url="http://images.example/missing")
    with pytest.raises(InvalidSpec, match="image_checksum"):
        engine.images.upload("c", storage_domain="data",
                             upload_image_url="http://images.example/a.qcow2",
                             image_checksum="sha256:" + "0" * 64)
    assert [v.name for v in rows(engine)] == ["a"]


@pytest.mark.parametrize("kwargs,option", [
    ({}, "upload_image_path"),
    ({"upload_image_path": "/nonexistent"}, "upload_image_path"),
    ({"upload_image_url": "file:///etc/shadow"}, "upload_image_url"),
    ({"upload_image_url": "http://x/a", "image_format": "iso9660"}, "image_format"),
    ({"upload_image_url": "http://x/a", "image_checksum": "md5:00"}, "image_checksum"),
    ({"upload_image_url": "http://x/a", "content_type": "iso", "fmt": "qcow2"}, "format"),
    ({"upload_image_url": "http://x/a", "size": "-1"}, "size"),
])
def test_bad_options_name_themselves(engine, agent, kwargs, option):
    with pytest.raises(InvalidSpec) as caught:
        engine.images.upload("x", storage_domain="data", **kwargs)
    assert caught.value.field == option
    assert rows(engine) == []


def test_no_host_with_the_domain_available(engine, cluster, image):
    engine.storage_domains.ensure("data", path="/srv/data", clusters=[cluster])
    with pytest.raises(KestrelError, match="storage domain 'data'"):
        engine.images.upload("x", storage_domain="data", upload_image_path=image)


def test_a_short_file_fails_the_job_and_leaves_nothing(engine, agent, image, monkeypatch):
    monkeypatch.setattr(os.path, "getsize", lambda path: len(IMAGE) + 10)
    with pytest.raises(KestrelError, match="ended after"):
        engine.images.upload("base", storage_domain="data", upload_image_path=image)
    assert rows(engine) == [] and agent.jobs == {}


def test_download_writes_the_file_whole_and_private(engine, agent, image, tmp_path):
    disk = engine.images.upload("base", storage_domain="data", upload_image_path=image).entity
    target = tmp_path / "out" / "base.qcow2"
    target.parent.mkdir()
    seen = []
    outcome = engine.images.download("base", str(target), progress=seen.append)
    assert outcome.changed and target.read_bytes() == IMAGE
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert outcome.entity["sha256"] == disk["sha256"] and seen
    assert os.listdir(target.parent) == ["base.qcow2"] and agent.jobs == {}
    assert engine.images.download("base", str(target)).changed is False
    # An answer cut short: the sha256 differs, nothing is written.
    agent.export_cut = 100
    target.unlink()
    with pytest.raises(KestrelError, match="sha256"):
        engine.images.download("base", str(target))
    assert os.listdir(target.parent) == [] and agent.jobs == {}


def test_remove_a_floating_disk(engine, agent, image):
    disk = engine.images.upload("base", storage_domain="data", upload_image_path=image).entity
    assert engine.images.remove("base").changed
    assert rows(engine) == [] and agent.deleted_volumes[-1]["volume"] == disk["volume_id"]
    assert engine.images.remove("base").changed is False


def test_a_locked_volume_whose_job_is_gone_is_removed_with_its_file(engine, agent, image,
                                                                    monkeypatch):
    """As after an engine crash mid-upload, or an agent restart: the row stays locked
    with its job; once the agent no longer knows the job the loop removes both."""
    from engine_lib.services import images

    def crash(progress):
        raise KeyboardInterrupt  # the writer dies: nothing of it runs again
    engine.images._unregister = lambda volume_id: None  # its cleanup never ran
    monkeypatch.setattr(images, "_forget", lambda agent, job: None)
    with pytest.raises(KeyboardInterrupt):
        engine.images.upload("base", storage_domain="data", upload_image_path=image,
                             progress=crash)
    (volume,) = rows(engine)
    assert volume.status == "locked" and volume.job_host == "h1"
    assert images.reconcile(engine) == []  # the agent still knows the job
    agent.reachable = False
    assert images.reconcile(engine) == []  # cannot tell: kept
    agent.reachable = True
    agent.jobs.clear()  # the agent restarted
    assert images.reconcile(engine) == [volume.id]
    assert rows(engine) == []
    assert agent.deleted_volumes == [{"domain": "data", "image": volume.image_id,
                                      "volume": volume.id}]


def test_a_cdrom_names_an_iso_disk_and_renders_its_volume(engine, agent, cluster, tmp_path):
    iso = tmp_path / "netinst.iso"
    iso.write_bytes(b"\0" * 32768 + b"\1CD001")
    disk = engine.images.upload("netinst.iso", storage_domain="data",
                                upload_image_path=str(iso), content_type="iso").entity
    assert disk["format"] == "raw" and disk["readonly"] is True
    spec = {"name": "inst", "cluster": cluster, "memory": "256MiB", "cdrom": "netinst.iso"}
    engine.vms.ensure(spec)
    xml = engine.vms.domain_xml("inst")
    place = f"data/{disk['image_id']}/{disk['volume_id']}"
    assert f"<source file='/kestrel-placeholder/storage/{place}'/>" in xml
    assert f"volume='{disk['volume_id']}'" in xml  # the agent accepts and checks it
    assert engine.vms.ensure(spec).changed is False
    with pytest.raises(InvalidSpec, match="cdrom.iso: no ISO disk named 'other.iso'"):
        engine.vms.ensure({**spec, "cdrom": "other.iso"})
    # 'domain:path' still names a file on a domain.
    engine.vms.ensure({**spec, "cdrom": "data:isos/x.iso"})
    assert "/kestrel-placeholder/storage/data/isos/x.iso" in engine.vms.domain_xml("inst")
