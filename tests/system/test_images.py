"""Images in and out through the REAL agents of the lab, on its shared storage domain
'data': uploads (qcow2, raw, an ISO then a VM's cdrom), downloads compared with
qemu-img, and the bad inputs, each a clear error naming the option with no volume
row left and the domain's other files untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_engine_on_lab import tiny_guest

from engine_lib.model import Volume
from engine_lib.protocol.errors import Conflict, InvalidSpec
from engine_lib.services import images as images_service
from kestrel_lab import hosts as lab_hosts

MIB = 1 << 20


@pytest.fixture
def cluster(engine, agents, lab):
    engine.clusters.ensure("lab", virt_type="qemu")
    for agent in agents:
        engine.hosts.ensure(agent.name, address=agent.address, cluster="lab")
    engine.storage_domains.ensure("data", path=lab_hosts.shared_dir(lab[0].state_dir, "data"),
                                  clusters=["lab"])
    return "lab"


@pytest.fixture
def domain(lab) -> Path:
    return Path(lab_hosts.shared_dir(lab[0].state_dir, "data"))


def _img(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True)


def _tree(root: Path) -> dict[str, str]:
    """Every file on the domain (but the lab's lock files) with its size and mtime."""
    return {str(p.relative_to(root)): f"{p.stat().st_size}/{p.stat().st_mtime_ns}"
            for p in root.rglob("*") if p.is_file()}


def _rows(engine) -> list[tuple[str, str]]:
    with engine.store.transaction(commit=False) as session:
        return [(v.name, v.status) for v in session.query(Volume).filter(Volume.name != "")]


@pytest.fixture
def sources(tmp_path) -> Path:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(2 * MIB) + b"\0" * (6 * MIB))
    _img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_path / "disk.qcow2"))
    return tmp_path


def test_qcow2_and_raw_uploads_come_back_equal(engine, cluster, domain, sources, tmp_path):
    for source, image_format in (("disk.qcow2", "qcow2"), ("disk.raw", "raw")):
        name = f"up-{image_format}"
        disk = engine.images.upload(name, storage_domain="data",
                                    upload_image_path=str(sources / source),
                                    image_format=image_format).entity
        assert disk["status"] == "ok" and disk["format"] == "qcow2"
        assert (domain / disk["image_id"] / disk["volume_id"]).exists()
        out = tmp_path / f"{name}.out"
        engine.images.download(name, str(out))
        assert subprocess.run(["qemu-img", "compare", str(sources / "disk.raw"), str(out)],
                              capture_output=True).returncode == 0
        engine.images.remove(name)
        assert not (domain / disk["image_id"] / disk["volume_id"]).exists()
    assert _rows(engine) == []


def test_an_iso_upload_is_a_vms_cdrom(engine, cluster, domain, tmp_path):
    iso = tmp_path / "boot.iso"
    iso.write_bytes(os.urandom(MIB))
    disk = engine.images.upload("boot.iso", storage_domain="data", upload_image_path=str(iso),
                                content_type="iso").entity
    vm = engine.vms.ensure({**tiny_guest("iso-vm"), "cdrom": "boot.iso"},
                           state="running").entity
    try:
        host = engine.hosts.info(name=vm["host"])[0]
        live = engine.agent(host["address"], host["port"]).vm_xml(vm["id"])
        path = domain / disk["image_id"] / disk["volume_id"]
        assert f"<source file='{path}'" in live.split("device='cdrom'")[1].split("</disk>")[0]
    finally:
        engine.vms.ensure({"name": "iso-vm"}, state="absent", force=True)
    assert _rows(engine) == [("boot.iso", "ok")] and path.exists()  # the VM's removal keeps it
    engine.images.remove("boot.iso")


def _bad(engine, domain, option, match, **kwargs):
    before = _tree(domain)
    with pytest.raises(InvalidSpec) as caught:
        engine.images.upload("bad", storage_domain="data", **kwargs)
    assert caught.value.field == option, caught.value
    assert match in caught.value.reason, caught.value
    assert _rows(engine) == [] and _tree(domain) == before


def test_bad_images_are_refused_naming_the_option(engine, cluster, domain, sources, tmp_path):
    data = (sources / "disk.qcow2").read_bytes()
    (tmp_path / "cut.qcow2").write_bytes(data[: len(data) // 2])
    _bad(engine, domain, "upload_image_path", "", upload_image_path=str(tmp_path / "cut.qcow2"))
    _img("create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw",
         str(tmp_path / "evil.qcow2"))
    _bad(engine, domain, "upload_image_path", "backing",
         upload_image_path=str(tmp_path / "evil.qcow2"))
    _bad(engine, domain, "image_format", "", upload_image_path=str(sources / "disk.qcow2"),
         image_format="raw")


def test_an_image_bigger_than_the_free_space_is_refused(engine, cluster, domain, tmp_path):
    with engine.store.transaction() as session:  # as a nearly full domain reports
        from engine_lib.model import Host
        for host in session.query(Host):
            host.storage_domains = [{**e, "free_mib": 1} for e in host.storage_domains]
    (tmp_path / "big.raw").write_bytes(b"\0" * (4 * MIB))
    _bad(engine, domain, "upload_image_path", "MiB free",
         upload_image_path=str(tmp_path / "big.raw"))


def test_a_url_nothing_answers_on_names_the_option_and_leaves_nothing(engine, cluster, domain,
                                                                      lab):
    # Another lab host, on a port nothing listens on: the host's download fails at once.
    url = f"http://{lab[-1].address}:9/never.qcow2"
    before = _tree(domain)
    with pytest.raises(InvalidSpec) as caught:
        engine.images.upload("url", storage_domain="data", upload_image_url=url, timeout=5)
    assert caught.value.field == "upload_image_url", caught.value
    assert _rows(engine) == [] and _tree(domain) == before


def test_an_upload_killed_mid_stream_fails_and_its_row_goes(engine, cluster, domain, sources,
                                                            engine_dir, tmp_path):
    """The CLI is killed half way: the agent fails the job (short body); the row it left
    locked is removed by the engine loop's reconciliation once the job is gone."""
    big = tmp_path / "big.raw"
    with open(big, "wb") as out:
        for _ in range(256):
            out.write(os.urandom(MIB))
    before = _tree(domain)
    db_url = engine.config.db_url
    cli = subprocess.Popen(
        [sys.executable, "-c", "import sys; from engine_lib.cli import main; sys.exit(main())",
         "disk", "upload", "killed", "--path",
         str(big), "--storage-domain", "data", "--engine-dir", str(engine_dir),
         "--db-url", db_url], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert cli.stderr is not None
    for line in cli.stderr:  # a plain percentage line per 10 %
        if line.startswith("uploading: 10%"):
            break
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait()
    assert _rows(engine) == [("killed", "locked")]
    with engine.store.transaction(commit=False) as session:
        volume = session.query(Volume).one()
        job, host = volume.job_id, volume.job_host
    agent = engine.agent(*_address(engine, host))
    status = _until_finished(agent, job)
    assert status == "failed"
    agent.forget_job(job)  # as the agent does after its retention time
    assert len(images_service.reconcile(engine)) == 1
    assert _rows(engine) == [] and _tree(domain) == before


def _address(engine, host: str) -> tuple[str, int]:
    info = engine.hosts.info(name=host)[0]
    return info["address"], info["port"]


def _until_finished(agent, job: str) -> str:
    done = threading.Event()
    status = ""
    for _ in range(600):
        status = agent.job(job)["status"]
        if status != "running":
            break
        done.wait(0.1)
    return status


def test_two_uploads_to_the_same_disk_at_once(engine, cluster, domain, sources):
    results: list[BaseException | None] = []
    started = threading.Event()

    def first():
        def progress(report):
            started.set()
        try:
            engine.images.upload("twice", storage_domain="data",
                                 upload_image_path=str(sources / "disk.raw"), progress=progress)
            results.append(None)
        except BaseException as exc:
            results.append(exc)
    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(60)
    with pytest.raises(Conflict, match="disk 'twice'"):
        engine.images.upload("twice", storage_domain="data",
                             upload_image_path=str(sources / "disk.qcow2"))
    thread.join(120)
    assert results == [None] and _rows(engine) == [("twice", "ok")]
    engine.images.remove("twice")

