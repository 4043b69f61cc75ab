"""``kestrel user`` and ``kestrel token``: bootstrapping API access on the engine host."""

import io
import json

import pytest

from engine_lib import cli
from engine_lib.engine import Engine
from engine_lib.protocol.errors import Unauthenticated

pytestmark = pytest.mark.usefixtures("cheap_argon2")


def test_a_first_admin_and_its_token(tmp_path, capsys, monkeypatch):
    where = ["--engine-dir", str(tmp_path)]
    monkeypatch.setattr("sys.stdin", io.StringIO("a secret of some length\n"))
    assert cli.main(["user", "set", "admin", "--role", "SuperUser", "--password-stdin",
                     *where]) == 0
    shown = capsys.readouterr().out
    assert "a secret of some length" not in shown
    assert json.loads(shown)["permissions"][0]["role"] == "SuperUser"
    assert cli.main(["token", "create", "--user", "admin", "--name", "awx", "--role",
                     "VmOperator", *where]) == 0
    token = capsys.readouterr().out.strip()
    with Engine.open(engine_dir=str(tmp_path)) as engine:
        assert engine.authn.login("admin", "a secret of some length", client="c")["user"] \
            == "admin"
        assert engine.authn.actor_for_token(token).token_role == "VmOperator"
    assert cli.main(["token", "create", "--user", "admin", "--name", "awx", *where]) == 1
    assert "already has a token named awx" in capsys.readouterr().err
    assert cli.main(["token", "revoke", "--user", "admin", "--name", "awx", *where]) == 0
    assert json.loads(capsys.readouterr().out) == {"changed": True}
    assert cli.main(["user", "set", "admin", "--disable", *where]) == 0
    capsys.readouterr()
    assert cli.main(["user", "list", *where]) == 0
    assert [(u["name"], u["enabled"]) for u in json.loads(capsys.readouterr().out)] == [
        ("admin", False)]
    with Engine.open(engine_dir=str(tmp_path)) as engine, pytest.raises(Unauthenticated):
        engine.authn.actor_for_token(token)


def test_a_short_password_is_refused_by_field(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["user", "set", "bob", "--password-stdin",
                     "--engine-dir", str(tmp_path)]) == 2
    assert "password: must be 12" in capsys.readouterr().err


def test_no_password_on_the_command_line(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["user", "set", "bob", "--password", "x" * 20, "--engine-dir", str(tmp_path)])
