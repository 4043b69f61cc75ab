"""What every engine subcommand shares: the engine options, opening the engine, JSON output."""

from __future__ import annotations

import argparse
import json


def engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine-dir", help="engine state directory "
                        "(default: $KESTREL_ENGINE_DIR or /var/lib/kestrel/engine)")
    parser.add_argument("--db-url", help="database URL (default: $KESTREL_DB_URL or a SQLite "
                        "file in the engine directory)")


def open_engine(args):
    from engine_lib.engine import Engine

    return Engine.open(engine_dir=args.engine_dir, db_url=args.db_url)


def print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
