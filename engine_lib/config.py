"""Where the engine keeps its state: one directory (CA, database) and a DB URL.

The directory also holds what only the engine host's administrator decides:
``fence_agents``, the fence agents beyond the system's ``/usr/sbin/fence_*``
that hosts' power management may name (one absolute path a line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENGINE_DIR = "/var/lib/kestrel/engine"
ENGINE_DIR_ENV = "KESTREL_ENGINE_DIR"
DB_URL_ENV = "KESTREL_DB_URL"
FENCE_AGENTS_FILE = "fence_agents"


@dataclass(frozen=True)
class EngineConfig:
    engine_dir: Path
    db_url: str

    @property
    def pki_dir(self) -> Path:
        return self.engine_dir / "pki"

    def make_private(self) -> None:
        """The engine directory, 0700: it holds the CA key, the SSH key to every host and
        (embedded) the database."""
        self.engine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.engine_dir.stat().st_mode & 0o077:
            os.chmod(self.engine_dir, 0o700)

    @property
    def fence_agents_file(self) -> Path:
        return self.engine_dir / FENCE_AGENTS_FILE

    def fence_agents(self) -> list[str]:
        """The administrator's extra fence agents: absolute paths, ``#`` comments ignored.

        Read on every use, so the engine loop sees an edit without a restart.
        """
        try:
            text = self.fence_agents_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return [line for line in lines if line]

    @classmethod
    def resolve(cls, engine_dir: str | None = None, db_url: str | None = None) -> EngineConfig:
        """Explicit arguments win, then the environment, then the defaults.

        The default database is a SQLite file inside the engine directory, so
        one directory is all an embedded engine needs.
        """
        directory = Path(engine_dir or os.environ.get(ENGINE_DIR_ENV) or DEFAULT_ENGINE_DIR)
        url = db_url or os.environ.get(DB_URL_ENV) or f"sqlite:///{directory / 'engine.db'}"
        return cls(engine_dir=directory, db_url=url)
