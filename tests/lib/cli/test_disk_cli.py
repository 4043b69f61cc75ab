"""``kestrel disk``: its progress output, on a terminal and elsewhere."""

from __future__ import annotations

import io

from engine_lib.cli import build_parser
from engine_lib.cli.disks import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def reports(phase, total=100 << 20):
    return [{"phase": phase, "done_bytes": done << 20, "total_bytes": total,
             "progress": 100.0 * (done << 20) / total} for done in range(0, 101, 4)]


def test_a_pipe_gets_a_plain_line_per_phase_and_ten_percent_step():
    out = io.StringIO()
    bar = ProgressBar(out)
    for report in reports("uploading") + [{"phase": "checking", "progress": 100}]:
        bar(report)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "uploading: 0% 0.0/100.0 MiB"
    assert lines[-2] == "uploading: 100% 100.0/100.0 MiB" and lines[-1] == "checking: 100%"
    assert len(lines) == 12 and "\r" not in out.getvalue()


def test_a_terminal_gets_a_bar_redrawn_in_place():
    out = Terminal()
    bar = ProgressBar(out)
    for report in reports("uploading"):
        bar(report)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 26 and text.endswith("\n") and text.count("\n") == 1
    assert "[" + "#" * 30 + "] 100.0% 100.0/100.0 MiB" in text


def test_the_disk_commands_parse():
    parser = build_parser()
    args = parser.parse_args(["disk", "upload", "base", "--path", "/x.qcow2",
                              "--storage-domain", "data", "--content-type", "iso"])
    assert args.func.__name__ == "disk_upload" and args.content_type == "iso"
    args = parser.parse_args(["disk", "download", "base", "/tmp/base.qcow2", "--format", "raw"])
    assert args.func.__name__ == "disk_download" and args.format == "raw"
    assert parser.parse_args(["disk", "list"]).func.__name__ == "disk_list"
