"""`ansible-doc kestrel.virt.<module>` renders for every module, with examples and return values,
and every module is in the action group module_defaults uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from engine_fixtures import REPO, _collections_path

MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py")
                 if not p.name.startswith("_"))


def ansible_doc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), *args],
        env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": _collections_path(),
             "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1"},
        capture_output=True, text=True, timeout=300, check=False)


def test_every_module_renders_with_examples_and_return_values():
    names = [f"kestrel.virt.{m}" for m in MODULES]
    result = ansible_doc("--json", *names)
    assert result.returncode == 0, result.stderr
    docs = json.loads(result.stdout)
    assert sorted(docs) == names
    for name, doc in docs.items():
        assert doc["doc"]["short_description"], name
        assert doc["examples"].strip(), f"{name} has no EXAMPLES"
        assert doc["return"], f"{name} has no RETURN"
        assert {"engine_dir", "db_url"} <= set(doc["doc"]["options"]), name
    text = ansible_doc(*names)
    assert text.returncode == 0 and "[WARNING]" not in text.stderr, text.stderr
    for name in names:
        assert f"> MODULE {name}" in text.stdout, name


def test_every_module_is_in_the_action_group():
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    assert sorted(runtime["action_groups"]["kestrel"]) == MODULES
