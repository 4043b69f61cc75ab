"""``kestrel snapshot list|create|remove|restore`` on a stopped VM (FakeAgent overlays and
offline merges)."""

import json

from conftest import FakeAgent

from engine_lib import cli
from engine_lib.engine import Engine

DOMAIN = "/var/lib/kestrel/storage/data"


def test_create_list_restore_and_errors(tmp_path, capsys, monkeypatch):
    agent = FakeAgent("h1")
    info = agent.host_info
    agent.host_info = lambda timeout=None: {**info(), "storage_domains": [
        {"name": "data", "path": DOMAIN, "available": True}]}
    agents = {"10.0.0.1": agent}
    opened = Engine.open.__func__

    def open_with_fakes(cls, engine_dir=None, db_url=None, agent_factory=None):
        return opened(cls, engine_dir, db_url,
                      lambda a, p: agents.setdefault(a, FakeAgent(a)))
    monkeypatch.setattr(Engine, "open", classmethod(open_with_fakes))
    where = ["--engine-dir", str(tmp_path)]
    with Engine.open(engine_dir=str(tmp_path)) as engine:
        engine.clusters.ensure("c1", virt_type="qemu")
        engine.hosts.ensure("h1", address="10.0.0.1", cluster="c1")
        engine.storage_domains.ensure("data", path=DOMAIN, clusters=["c1"])
        engine.vms.ensure({"name": "vm1", "cluster": "c1", "memory": 256, "disks": [
            {"name": "root", "size": "1GiB", "storage_domain": "data"}]})

    assert cli.main(["snapshot", "create", "vm1", "--description", "one", *where]) == 0
    taken = json.loads(capsys.readouterr().out)["snapshot"]
    assert taken["description"] == "one" and taken["quiesced"] is None
    assert cli.main(["snapshot", "list", "vm1", *where]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == [taken["id"]]
    assert cli.main(["snapshot", "restore", "vm1", taken["id"], *where]) == 0
    assert json.loads(capsys.readouterr().out)["snapshot"]["removed_snapshots"] == []
    assert cli.main(["snapshot", "remove", "vm1", taken["id"], *where]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is True
    assert cli.main(["snapshot", "list", "vm1", *where]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["snapshot", "create", "vm1", "--use-memory", *where]) != 0
    assert "use_memory" in capsys.readouterr().err
    assert cli.main(["snapshot", "restore", "vm1", "nope", *where]) != 0
    assert "'nope' does not exist" in capsys.readouterr().err
