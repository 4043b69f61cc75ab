"""``kestrel backup list|create|remove|restore``."""

import json

import pytest

from engine_lib import cli
from engine_lib.engine import Engine
from engine_lib.model import Backup, Volume


def test_list_remove_and_restore_refusals(tmp_path, capsys):
    where = ["--engine-dir", str(tmp_path)]
    with Engine.open(engine_dir=str(tmp_path)) as engine:
        with engine.store.transaction() as session:
            session.add(Volume(id="f1", image_id="i1", storage_domain="bk", format="qcow2",
                               size_mib=64, content_type="backup"))
            session.add(Backup(id="b1", vm_id="gone", vm_name="old", storage_domain="bk",
                               status="succeeded", disks=[{"disk": "root", "image_id": "i1",
                                                           "volume_id": "f1"}]))
    assert cli.main(["backup", "list", "old", *where]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == "b1" and listed["vm"] == "old" and listed["status"] == "succeeded"
    assert cli.main(["backup", "list", "--id", "nope", *where]) == 0
    assert json.loads(capsys.readouterr().out) == []
    # Its VM is gone: settings were not recorded (a row from before 0022), disks restore.
    assert cli.main(["backup", "restore", "b1", "--vm-name", "new", *where]) != 0
    assert "restore_disk_name instead" in capsys.readouterr().err
    # The file is deleted by a host: none is Up, so nothing is removed.
    assert cli.main(["backup", "remove", "b1", *where]) != 0
    assert "no host is Up" in capsys.readouterr().err
    assert cli.main(["backup", "create", "nope", *where]) != 0
    assert "no VM named 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["backup", "restore", "b1", "--vm-name", "a", "--disk-name", "b", *where])
    assert exit_.value.code == 2
