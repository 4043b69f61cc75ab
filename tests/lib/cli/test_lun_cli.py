"""``kestrel lun``: the administrator's registry of LUNs VM disks may use."""

import json

from engine_lib import cli


def test_add_list_and_remove_a_lun(tmp_path, capsys):
    where = ["--engine-dir", str(tmp_path)]
    assert cli.main(["lun", "add", "db", "--path", "/dev/disk/by-id/wwn-0x5000",
                     "--wwid", "0x5000", *where]) == 0
    assert json.loads(capsys.readouterr().out)["lun"]["path"] == "/dev/disk/by-id/wwn-0x5000"
    assert cli.main(["lun", "list", *where]) == 0
    assert [lun["name"] for lun in json.loads(capsys.readouterr().out)] == ["db"]
    assert cli.main(["lun", "add", "mem", "--path", "/etc/shadow", *where]) == 2
    assert "must be a block device path under /dev" in capsys.readouterr().err
    assert cli.main(["lun", "remove", "db", *where]) == 0
    assert json.loads(capsys.readouterr().out) == {"changed": True}
