"""``kestrel template list|create|remove``: template versions (engine_lib.services.templates)."""

from __future__ import annotations

import sys
import time

from engine_lib.cli.common import open_engine, print_json


class JobProgress:
    """An agent job's progress (0-100): a bar on a TTY, a line every few seconds otherwise."""

    def __init__(self, stream, what: str):
        self.stream, self.what = stream, what
        self.tty = stream.isatty()
        self._last_line = 0.0

    def __call__(self, job: dict) -> None:
        share = min(100, max(0, int(job.get("progress") or 0)))
        if self.tty:
            self.stream.write(f"\r{self.what} [{'#' * (share * 30 // 100):<30}] {share:3d}%")
            self.stream.flush()
        elif time.monotonic() - self._last_line >= 5.0:
            self._last_line = time.monotonic()
            self.stream.write(f"{self.what}: {share}%\n")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def template_list(args) -> int:
    with open_engine(args) as engine:
        print_json(engine.templates.info(name=args.name, version=args.version))
    return 0


def _version(args) -> dict | None:
    version = {k: v for k, v in (("number", args.version), ("name", args.version_name)) if v}
    return version or None


def template_create(args) -> int:
    """A new template version from a stopped VM (its disks copied) or a floating disk."""
    show = JobProgress(sys.stderr, f"template {args.name}: copying")
    with open_engine(args) as engine:
        outcome = engine.templates.ensure(
            args.name, vm=args.vm, disk=args.disk, cluster=args.cluster, version=_version(args),
            seal=args.seal, description=args.description, timeout=args.timeout, progress=show)
    show.close()
    print_json({"changed": outcome.changed, "template": outcome.entity})
    return 0


def template_remove(args) -> int:
    """Remove a version (or all) with its volumes; refused while thin VMs depend on it."""
    with open_engine(args) as engine:
        outcome = engine.templates.ensure(args.name, state="absent", version=_version(args))
    print_json({"changed": outcome.changed})
    return 0
