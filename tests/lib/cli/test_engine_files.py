"""The engine's files keep its secrets: the directory is 0700 and the SQLite database, with
its WAL, shared-memory and journal files, 0600 (fence and VNC passwords and cloud-init
user-data are stored in clear)."""

from __future__ import annotations

import os
import stat

import pytest

from engine_lib import cli
from engine_lib.engine import Engine


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def _permissive_umask():
    """A typical root shell's umask: what the engine must not rely on."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_engine_init_makes_a_private_directory_and_database(tmp_path):
    engine_dir = tmp_path / "var" / "engine"
    assert cli.main(["engine", "init", "--engine-dir", str(engine_dir)]) == 0
    assert _mode(engine_dir) == 0o700
    with Engine.open(str(engine_dir)) as engine:
        engine.clusters.ensure("c1")  # a write: SQLite makes its -wal and -shm files
        files = sorted(p.name for p in engine_dir.iterdir() if p.name.startswith("engine.db"))
        assert files == ["engine.db", "engine.db-shm", "engine.db-wal"]
        for name in files:
            assert _mode(engine_dir / name) == 0o600, name


def test_an_older_engine_directory_is_tightened_when_opened(tmp_path):
    engine_dir = tmp_path / "engine"
    with Engine.open(str(engine_dir)) as engine:
        engine.clusters.ensure("c1")
    os.chmod(engine_dir, 0o755)
    os.chmod(engine_dir / "engine.db", 0o644)
    with Engine.open(str(engine_dir)) as engine:
        assert [c["name"] for c in engine.clusters.info()] == ["c1"]
    assert _mode(engine_dir) == 0o700
    assert _mode(engine_dir / "engine.db") == 0o600
