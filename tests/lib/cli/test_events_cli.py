"""``kestrel events``: the audit log on the engine host, with who acted."""

import json

from engine_lib import cli
from engine_lib.engine import Engine
from engine_lib.services import actor
from engine_lib.services.common import audit


def test_events_show_and_filter_the_user(tmp_path, capsys):
    with Engine.open(engine_dir=str(tmp_path)) as engine:
        for who, message in ((actor.Actor("alice", user_id="u1", token_id="t1"), "by alice"),
                             (actor.ENGINE_LOOP, "by the loop")):
            with actor.acting_as(who), engine.store.transaction() as session:
                audit(session, "vm", "vm1", message)
    where = ["--engine-dir", str(tmp_path)]

    assert cli.main(["events", *where]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["alice", "engine"]
    assert lines[0].endswith("vm1              by alice")

    assert cli.main(["events", "--user", "engine", "--json", *where]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert (entry["user"], entry["message"]) == ("engine", "by the loop")
