"""``kestrel template list|create|remove``."""

import io
import json

import pytest

from engine_lib import cli
from engine_lib.cli.templates import JobProgress
from engine_lib.engine import Engine
from engine_lib.model import Volume


def test_create_from_a_floating_disk_list_and_remove(tmp_path, capsys):
    where = ["--engine-dir", str(tmp_path)]
    with Engine.open(engine_dir=str(tmp_path)) as engine:
        engine.clusters.ensure("c1", virt_type="qemu")
        with engine.store.transaction() as session:
            session.add(Volume(id="v1", image_id="i1", storage_domain="data", format="qcow2",
                               size_mib=64, name="debian12"))
    assert cli.main(["template", "create", "deb", "--disk", "debian12", "--cluster", "c1",
                     "--version-name", "first", *where]) == 0
    created = json.loads(capsys.readouterr().out)["template"]
    assert created["version"] == {"number": 1, "name": "first"} and created["status"] == "ok"
    assert cli.main(["template", "list", "--name", "deb", *where]) == 0
    assert [t["disks"][0]["volume_id"] for t in json.loads(capsys.readouterr().out)] == ["v1"]
    # Its volume is deleted by a host: none is Up, so nothing is removed.
    assert cli.main(["template", "remove", "deb", *where]) != 0
    assert "no host of the cluster is Up" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["template", "create", "x", "--vm", "a", "--disk", "b", *where])
    assert exit_.value.code == 2
    assert "not allowed with argument --vm" in capsys.readouterr().err


def test_job_progress_lines_without_a_terminal():
    out = io.StringIO()
    show = JobProgress(out, "template t: copying")
    show({"progress": 40})
    show.close()
    assert out.getvalue() == "template t: copying: 40%\n"
