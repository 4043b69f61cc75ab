"""Build-once files in the lab's state directory, keyed by their recipe.

A cached image is named after a hash of what it is made of, so a changed
recipe builds a new file and an unchanged one is reused. Several processes may
ask for the same image at once (parallel test sessions): the first builds it
under an exclusive lock on ``<path>.lock`` while the others wait, then find it
done. The build writes into a temporary directory next to the image and the
result is renamed into place, so a present file is always a complete one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable

IMAGES_SUBDIR = "images"


def images_dir(state_dir: str) -> str:
    """Where cached guest images live: outside any checkout, kept across lab downs."""
    return os.path.join(os.path.abspath(state_dir), IMAGES_SUBDIR)


def recipe_hash(parts: Iterable[str], length: int = 12) -> str:
    """A short stable digest of the recipe's parts (order matters)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def cached(path: str, build: Callable[[str, str], None]) -> str:
    """``path``, built first by ``build(work_dir, output)`` when missing.

    ``build`` writes the finished file at ``output`` (inside ``work_dir``, a
    scratch directory on the same filesystem, removed afterwards whatever happens).
    """
    if os.path.isfile(path):
        return path
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(path):  # built by whoever held the lock before us
            return path
        work = tempfile.mkdtemp(dir=directory, prefix=f".{os.path.basename(path)}.build-")
        try:
            output = os.path.join(work, os.path.basename(path))
            build(work, output)
            os.chmod(output, 0o644)
            os.replace(output, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return path
