"""A throwaway PostgreSQL server for tests: started in a temp dir, gone after.

Listens only on a Unix socket (no TCP), trusts local connections, and runs as
the ``postgres`` user because initdb refuses root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (Debian package 'postgresql'); "
                           "run scripts/install-system-deps.sh")
    return os.path.dirname(found[-1])


def _as_postgres(argv: list[str]) -> list[str]:
    return argv if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *argv]


@contextmanager
def server(port: int = 55432):
    """Yield a SQLAlchemy URL prefix (append a database name) for a fresh server."""
    bindir = _bindir()
    root = tempfile.mkdtemp(prefix="kestrel-pg-")
    data, sockets = os.path.join(root, "data"), os.path.join(root, "run")
    os.makedirs(sockets)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    subprocess.run(_as_postgres([f"{bindir}/initdb", "-A", "trust", "-U", "postgres",
                                 "-D", data]), check=True, capture_output=True)
    subprocess.run(_as_postgres([
        f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(root, "log"), "-w",
        "-o", f"-p {port} -k {sockets} -c listen_addresses= -c fsync=off",
        "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@/%s?host={sockets}&port={port}"
    finally:
        subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w",
                                     "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(url_template: str, name: str) -> str:
    """Create database ``name`` and return its URL."""
    import psycopg

    admin = url_template % "postgres"
    conninfo = admin.replace("postgresql+psycopg://", "postgresql://")
    for attempt in range(50):
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            break
        except psycopg.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    return url_template % name
