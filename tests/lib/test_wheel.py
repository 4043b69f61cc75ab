"""The agent wheel: what a host installs, exactly as the host role installs it.

A fresh venv of the system Python with --system-site-packages (so Debian's
python3-libvirt is used), then ``pip install --no-deps --no-index``: if the
wheel is malformed, lacks package data or declares the wrong console script,
this is where it shows.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

import engine_lib
from engine_lib.wheel import build_agent_wheel

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return Path(build_agent_wheel(str(tmp_path_factory.mktemp("wheel"))))


@pytest.fixture(scope="module")
def agent_venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("agent") / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, env=_clean_env())
    return venv


def _clean_env() -> dict:
    """The caller's venv must not leak into the host's: no VIRTUAL_ENV, no PYTHONPATH."""
    return {key: value for key, value in os.environ.items()
            if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}


def _run(venv: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True,
                          text=True, env=_clean_env(), cwd="/")


def test_wheel_is_named_for_the_installed_version(wheel):
    assert wheel.name == f"kestrel_agent-{engine_lib.__version__}-py3-none-any.whl"


def test_record_lists_every_file_with_its_sha256(wheel):
    with zipfile.ZipFile(wheel) as archive:
        dist_info = f"kestrel_agent-{engine_lib.__version__}.dist-info"
        rows = list(csv.reader(io.StringIO(archive.read(f"{dist_info}/RECORD").decode())))
        recorded = {row[0] for row in rows}
        assert recorded == set(archive.namelist())
        for name, digest, size in rows:
            if name.endswith("/RECORD"):
                assert (digest, size) == ("", "")
                continue
            data = archive.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + expected.decode(), name
            assert int(size) == len(data), name


def test_wheel_carries_only_what_a_host_runs_and_no_bytecode(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "engine_lib/agent/api.py" in names
    assert "engine_lib/protocol/placeholders.py" in names
    packages = {n.split("/")[1] for n in names if n.startswith("engine_lib/") and n.count("/") > 1}
    assert packages == {"agent", "protocol"}
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]


def test_rebuilding_gives_the_same_bytes_and_keeps_the_file(wheel):
    """Deployment compares checksums: an unchanged engine_lib must not look changed."""
    before = wheel.stat()
    again = Path(build_agent_wheel(str(wheel.parent)))
    assert again == wheel
    assert again.read_bytes() == wheel.read_bytes()
    assert again.stat().st_mtime_ns == before.st_mtime_ns
    assert [p.name for p in wheel.parent.iterdir()] == [wheel.name]


def test_pip_installs_it_offline_and_the_console_script_runs(agent_venv):
    result = _run(agent_venv, "kestrel-agent", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


@pytest.mark.parametrize("module", ["engine_lib.protocol.placeholders", "engine_lib.protocol.metadata",
                                    "engine_lib.protocol.errors", "engine_lib.agent"])
def test_host_side_modules_import_without_the_engine_dependencies(agent_venv, module):
    """The host has no SQLAlchemy, Jinja2 or cryptography; the agent must not need them."""
    code = (f"import {module}, engine_lib, sys; print(engine_lib.__file__); "
            "print(sorted(m for m in ('sqlalchemy', 'jinja2', 'yaml', 'cryptography') "
            "if m in sys.modules))")
    result = _run(agent_venv, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    location, heavy = result.stdout.splitlines()
    assert location.startswith(str(agent_venv)), "imported the controller's engine_lib"
    assert heavy == "[]"
