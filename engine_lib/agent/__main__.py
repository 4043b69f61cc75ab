"""``python -m engine_lib.agent``: run the host agent without the ``kestrel`` CLI."""

from __future__ import annotations

import argparse
import sys

from engine_lib.agent import main
from engine_lib.agent.config import DEFAULT_PATH
from engine_lib.protocol.errors import KestrelError


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kestrel-agent",
                                     description="kestrel host agent")
    parser.add_argument("--config", default=DEFAULT_PATH, help=f"INI file (default {DEFAULT_PATH})")
    parser.add_argument("--daemon", action="store_true", help="detach and run in the background")
    parser.add_argument("--pidfile", help="write the PID here; refuse to start if it names "
                                          "a running agent")
    parser.add_argument("--log-file", help="log here (daemon default /var/log/kestrel/agent.log)")
    args = parser.parse_args(argv)
    try:
        return main(args.config, daemon=args.daemon, pidfile=args.pidfile, log_file=args.log_file)
    except KestrelError as exc:
        print(f"kestrel agent: error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
