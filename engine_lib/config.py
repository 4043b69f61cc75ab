"""Where the engine keeps its state: one directory (CA, database) and a DB URL;
and what an administrator allowed, in ``<engine dir>/engine.conf`` (optional):

    [storage]
    file_domain_roots = /var/lib/kestrel/storage /srv/kestrel

The file is the administrator's, like agent.conf on a host: every entry point
(modules, CLI, the engine loop) reads the same one. Unknown sections and keys
are errors. The directory also holds ``fence_agents``: the fence agents beyond the
system's ``/usr/sbin/fence_*`` that hosts' power management may name (one absolute
path a line).
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine_lib.protocol.errors import InvalidSpec
from engine_lib.protocol.storage import DEFAULT_FILE_DOMAIN_ROOTS, check_roots

DEFAULT_ENGINE_DIR = "/var/lib/kestrel/engine"
ENGINE_DIR_ENV = "KESTREL_ENGINE_DIR"
DB_URL_ENV = "KESTREL_DB_URL"
FENCE_AGENTS_FILE = "fence_agents"
CONFIG_FILE = "engine.conf"
_KEYS = {"storage": ("file_domain_roots",)}


@dataclass(frozen=True)
class EngineConfig:
    engine_dir: Path
    db_url: str
    # Directories file storage domains may be in (each, or anything under it).
    file_domain_roots: tuple[str, ...] = field(default=DEFAULT_FILE_DOMAIN_ROOTS)

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
        settings = read_settings(directory / CONFIG_FILE)
        roots = settings.get("storage", {}).get("file_domain_roots")
        return cls(engine_dir=directory, db_url=url,
                   file_domain_roots=DEFAULT_FILE_DOMAIN_ROOTS if roots is None else
                   check_roots(f"{directory / CONFIG_FILE} [storage] file_domain_roots",
                               roots.split()))


def read_settings(path: Path) -> dict[str, dict[str, str]]:
    """engine.conf's sections and keys; empty when there is no file."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InvalidSpec(str(path), f"cannot read the engine config: {exc.strerror}") from None
    except configparser.Error as exc:
        raise InvalidSpec(str(path), f"not a valid INI file: {exc}") from None
    out: dict[str, dict[str, str]] = {}
    for section in parser.sections():
        if section not in _KEYS:
            raise InvalidSpec(f"{path} [{section}]", "unknown section (expected one of "
                                                    f"{', '.join(_KEYS)})")
        for key, value in parser.items(section):
            if key not in _KEYS[section]:
                raise InvalidSpec(f"{path} [{section}] {key}", "unknown key (expected one of "
                                                               f"{', '.join(_KEYS[section])})")
            out.setdefault(section, {})[key] = value
    return out
