"""The execution environment's lock (ee/requirements.lock) installs what pyproject.toml asks
for: every dependency pinned at a version its floor admits, each pin with its hashes, and no
database driver (jobs reach the engine through its API, never its database). `make ee`
checks with pip that nothing is missing from it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (ROOT / "ee" / "requirements.lock").read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9._-]+)==([^ \\]+)", line)
        if pinned:
            name = canonicalize_name(pinned[1])
            pins[name] = (pinned[2], 0)
        elif "--hash=sha256:" in line:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_every_engine_dependency_is_pinned_within_its_floor_and_hashed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    pins = _pins()
    for requirement in wanted:
        version, _ = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), (requirement, version)
    assert pins and all(hashes for _, hashes in pins.values())


def test_the_lock_has_no_database_driver():
    drivers = {canonicalize_name(Requirement(text).name)
               for text in tomllib.loads((ROOT / "pyproject.toml").read_text())
               ["project"]["optional-dependencies"]["postgresql"]}
    assert drivers and not drivers & set(_pins())
