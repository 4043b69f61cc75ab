"""The engine side of system tests: an engine directory with its CA, and a
way to run kestrel.virt modules through a real ``ansible-playbook``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine_lib.engine import Engine
from kestrel_lab import hosts as lab_hosts

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def engine_dir(engine_pki_dir, lab_state_dir) -> Path:
    """The engine directory whose CA signed the lab agents' certificates; its
    engine.conf allows the lab's shared storage, as an administrator would."""
    directory = Path(engine_pki_dir).parent
    shared = os.path.dirname(lab_hosts.shared_dir(lab_state_dir, "data"))
    (directory / "engine.conf").write_text(f"[storage]\nfile_domain_roots = {shared}\n")
    return directory


@pytest.fixture
def engine(engine_dir, tmp_path):
    """An engine using the session's CA and a database of its own."""
    eng = Engine.open(engine_dir=str(engine_dir), db_url=f"sqlite:///{tmp_path}/engine.db")
    yield eng
    eng.close()


def _collections_path() -> str:
    root = REPO / ".build" / "collections"
    link = root / "ansible_collections" / "kestrel" / "virt"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(REPO)
    return str(root)


class Playbook:
    """Runs tasks on localhost with ansible-playbook and returns each task's result."""

    def __init__(self, workdir: Path, engine_dir: Path | None = None, db_url: str | None = None,
                 connection: dict | None = None):
        """``connection``: the modules' connection options (engine_url, token...) instead of
        the engine directory and database."""
        self.workdir = workdir
        self.connection = connection or {"engine_dir": str(engine_dir), "db_url": db_url}
        self.output = ""  # the last run's ansible-playbook stdout

    def run(self, tasks: list[dict], *args: str, inventory: str | None = None) -> list[dict]:
        registered = []
        for index, task in enumerate(tasks):
            registered.append({**task, "register": f"result_{index}", "ignore_errors": True})
        out = self.workdir / "results.json"
        out.unlink(missing_ok=True)  # a failed run must not read the previous one's
        play = [{
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable},
            "module_defaults": {"group/kestrel.virt.kestrel": self.connection},
            "tasks": registered + [{
                "name": "collect results",
                "ansible.builtin.copy": {
                    "dest": str(out),
                    "content": "{{ [" + ", ".join(f"result_{i}" for i in range(len(tasks)))
                               + "] | to_json }}"}}],
        }]
        path = self.workdir / "play.yml"
        path.write_text(yaml.safe_dump(play))
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": _collections_path(),
               "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
        command = [str(Path(sys.executable).parent / "ansible-playbook"), str(path), *args]
        if inventory:
            command += ["-i", inventory]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                              check=False)
        self.output = proc.stdout
        if not out.exists():
            raise AssertionError(f"ansible-playbook failed:\n{proc.stdout}\n{proc.stderr}")
        return json.loads(out.read_text())


@pytest.fixture
def playbook(tmp_path, engine_dir, engine) -> Playbook:
    """Modules run against the same engine (directory and database) as ``engine``."""
    return Playbook(tmp_path, engine_dir, engine.store.url)
