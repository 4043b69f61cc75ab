"""The engine database: SQLAlchemy 2 over SQLite (embedded) or PostgreSQL.

Writers are serialized where it matters: a placement reads the claims on its
hosts and records its own in one transaction (oVirt's pending resources), so
two concurrent playbooks cannot both take the last free memory on a host.
On PostgreSQL that is a row lock on the cluster (``lock_cluster``), or for
MAC addresses, which are unique engine-wide, an advisory lock
(``lock_mac_addresses``); SQLite has no row locks, so every transaction there
starts with BEGIN IMMEDIATE.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.orm import Session, sessionmaker

from engine_lib.model import Cluster

SCHEMA_DIR = Path(__file__).parent / "schema"
# The key of the PostgreSQL advisory lock that MAC allocation holds ("kmac").
MAC_LOCK_KEY = 0x6B6D6163


def connect(db_url: str) -> SqlEngine:
    if db_url.startswith("sqlite"):
        database = db_url.split("///", 1)[-1]
        if database and database != ":memory:":
            private_sqlite_file(database)
        engine = create_engine(db_url, connect_args={"timeout": 30})
        _serialize_sqlite_writers(engine)
        return engine
    return create_engine(db_url, pool_pre_ping=True)


def private_sqlite_file(database: str) -> None:
    """Create the database file 0600 (0700 directory) before SQLite opens it, and tighten an
    older one: it holds fence and VNC passwords and cloud-init user-data in clear. SQLite
    gives its -wal, -shm and -journal files the database file's mode, so they follow."""
    path = Path(database)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{database}{suffix}", 0o600)


def _serialize_sqlite_writers(engine: SqlEngine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(engine: SqlEngine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCHEMA_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: SqlEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(engine), revision)


class Store:
    def __init__(self, db_url: str):
        self.url = db_url
        self.engine = connect(db_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self) -> None:
        upgrade(self.engine)

    @contextlib.contextmanager
    def transaction(self, commit: bool = True):
        """A session whose work commits together or not at all.

        With ``commit=False`` the work is rolled back at the end: check mode
        runs the real code path and throws its writes away.
        """
        with self._sessions() as session:
            session.begin()
            try:
                yield session
            except BaseException:
                session.rollback()
                raise
            if commit:
                session.commit()
            else:
                session.rollback()

    def close(self) -> None:
        self.engine.dispose()


def lock_cluster(session: Session, cluster_id: str) -> Cluster:
    """Serialize placements within one cluster until the transaction ends."""
    return session.execute(
        select(Cluster).where(Cluster.id == cluster_id).with_for_update()
    ).scalar_one()


def lock_mac_addresses(session: Session) -> None:
    """Serialize MAC checks and allocations engine-wide until the transaction ends, so
    two VMs created at once never draw the same address (the unique index would refuse
    the second)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MAC_LOCK_KEY})
