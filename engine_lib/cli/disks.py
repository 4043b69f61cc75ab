"""``kestrel disk upload|download|list``: floating disks and ISOs, images in and out."""

from __future__ import annotations

import sys
from typing import TextIO

from engine_lib.cli.common import open_engine, print_json

MiB = 1 << 20
BAR = 30


class ProgressBar:
    """A bar redrawn in place on a terminal; elsewhere (a log, a pipe) a plain line for
    each new phase and each 10 % step, so the output stays short and readable."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last: tuple[str, int] | None = None

    def __call__(self, report: dict) -> None:
        phase, percent = report.get("phase") or "working", float(report.get("progress") or 0)
        done, total = int(report.get("done_bytes") or 0), int(report.get("total_bytes") or 0)
        amount = f"{done / MiB:.1f}/{total / MiB:.1f} MiB" if total else ""
        if self.tty:
            filled = int(BAR * percent / 100)
            self.stream.write(f"\r{phase:<12} [{'#' * filled}{' ' * (BAR - filled)}] "
                              f"{percent:5.1f}% {amount}\033[K")
            self.stream.flush()
            self.last = (phase, int(percent))
            return
        step = (phase, int(percent // 10) * 10)
        if step != self.last:
            self.last = step
            self.stream.write(f"{phase}: {step[1]}% {amount}\n".rstrip() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()


def disk_upload(args) -> int:
    bar = ProgressBar()
    try:
        with open_engine(args) as engine:
            outcome = engine.images.upload(
                args.name, storage_domain=args.storage_domain, upload_image_path=args.path,
                upload_image_url=args.url, image_format=args.image_format or "",
                image_checksum=args.checksum or "", content_type=args.content_type,
                fmt=args.format, size=args.size, force=args.force, timeout=args.timeout,
                progress=bar)
    finally:
        bar.close()
    print_json({"changed": outcome.changed, "disk": outcome.entity})
    return 0


def disk_download(args) -> int:
    bar = ProgressBar()
    try:
        with open_engine(args) as engine:
            outcome = engine.images.download(args.name, args.path, fmt=args.format,
                                             progress=bar)
    finally:
        bar.close()
    print_json({"changed": outcome.changed, "disk": outcome.entity})
    return 0


def disk_list(args) -> int:
    with open_engine(args) as engine:
        print_json(engine.images.list())
    return 0
