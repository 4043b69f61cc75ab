"""Where the engine keeps its state: one directory (CA, database) and a DB URL."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENGINE_DIR = "/var/lib/kestrel/engine"
ENGINE_DIR_ENV = "KESTREL_ENGINE_DIR"
DB_URL_ENV = "KESTREL_DB_URL"


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

    @classmethod
    def resolve(cls, engine_dir: str | None = None, db_url: str | None = None) -> EngineConfig:
        """Explicit arguments win, then the environment, then the defaults.

        The default database is a SQLite file inside the engine directory, so
        one directory is all an embedded engine needs.
        """
        directory = Path(engine_dir or os.environ.get(ENGINE_DIR_ENV) or DEFAULT_ENGINE_DIR)
        url = db_url or os.environ.get(DB_URL_ENV) or f"sqlite:///{directory / 'engine.db'}"
        return cls(engine_dir=directory, db_url=url)
