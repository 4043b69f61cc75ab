"""Build the host agent's wheel from the engine_lib this controller runs.

Hosts install the agent from this wheel with ``pip install --no-deps
--no-index``: they need no package index, and engine and agents always run the
same code, whatever way the controller got engine_lib (wheel, sdist or an
editable checkout). The wheel carries only what a host runs: the agent and the
vocabulary it shares with the engine (``engine_lib.agent``,
``engine_lib.protocol``), never the store, services, scheduler or templates.
It is byte-for-byte reproducible — sorted entries, fixed timestamps — so
deployment tools can tell "changed" from its checksum.

Standard library only: the CLI calls this on the controller, and nothing here
may pull in the engine's heavier dependencies.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

import engine_lib

DISTRIBUTION = "kestrel-agent"
DIST_NAME = "kestrel_agent"  # the distribution name as wheel file names spell it
TAG = "py3-none-any"
SCRIPTS = {"kestrel-agent": "engine_lib.agent.__main__:cli"}
# What a host runs, below engine_lib/ (engine_lib/__init__.py holds only the version).
HOST_PACKAGES = ("agent", "protocol")
METADATA_LINES = ("Requires-Python: >=3.11",
            "Summary: kestrel.virt host agent (needs libvirt-python from the host's distribution)",
            "License: GPL-3.0-or-later")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def build_agent_wheel(out_dir: str) -> str:
    """Write ``kestrel_engine-<version>-py3-none-any.whl`` into ``out_dir``; return its path.

    An existing wheel with the same content is left untouched (same bytes,
    same mtime), so rebuilding on every deployment is free.
    """
    version = engine_lib.__version__
    dist_info = f"{DIST_NAME}-{version}.dist-info"
    files = [(name, path.read_bytes()) for name, path in _package_files()]
    files += [
        (f"{dist_info}/METADATA", _metadata(version, list(METADATA_LINES))),
        (f"{dist_info}/WHEEL", _wheel_file()),
        (f"{dist_info}/entry_points.txt", _entry_points(SCRIPTS)),
        (f"{dist_info}/top_level.txt", b"engine_lib\n"),
    ]
    files.append((f"{dist_info}/RECORD", _record(files, f"{dist_info}/RECORD")))
    data = _zip(files)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{DIST_NAME}-{version}-{TAG}.whl"
    if target.exists() and target.read_bytes() == data:
        return str(target)
    # Readers (a concurrent deployment) see either the old wheel or the new one.
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".wheel-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(target)


def _package_files() -> list[tuple[str, Path]]:
    """engine_lib/__init__.py and every file of the host packages, sorted."""
    root = Path(engine_lib.__file__).resolve().parent
    found = [("engine_lib/__init__.py", root / "__init__.py")]
    for package in HOST_PACKAGES:
        for directory, subdirs, names in os.walk(root / package):
            subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
            for name in names:
                if not name.endswith(_SKIPPED_SUFFIXES):
                    path = Path(directory) / name
                    found.append(("engine_lib/" + path.relative_to(root).as_posix(), path))
    return sorted(found)


def _metadata(version: str, lines: list[str]) -> bytes:
    header = ["Metadata-Version: 2.1", f"Name: {DISTRIBUTION}", f"Version: {version}", *lines]
    return ("\n".join(header) + "\n").encode()


def _wheel_file() -> bytes:
    return (
        "Wheel-Version: 1.0\n"
        "Generator: engine_lib.wheel\n"
        "Root-Is-Purelib: true\n"
        f"Tag: {TAG}\n"
    ).encode()


def _entry_points(scripts: dict[str, str]) -> bytes:
    body = "".join(f"{name} = {target}\n" for name, target in sorted(scripts.items()))
    return f"[console_scripts]\n{body}".encode()


def _record(files: list[tuple[str, bytes]], record_name: str) -> bytes:
    """RECORD lists every file with its urlsafe-base64 sha256 and size (PEP 376/427)."""
    rows = []
    for name, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{name},sha256={digest},{len(data)}")
    rows.append(f"{record_name},,")
    return ("\n".join(rows) + "\n").encode()


def _zip(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()
