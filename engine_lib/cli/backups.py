"""``kestrel backup list|create|remove|restore``: VM backups (engine_lib.services.backups)."""

from __future__ import annotations

import sys

from engine_lib.cli.common import open_engine, print_json
from engine_lib.cli.templates import JobProgress


def backup_list(args) -> int:
    with open_engine(args) as engine:
        print_json(engine.backups.info(vm_name=args.vm or "", backup_id=args.id or ""))
    return 0


def backup_create(args) -> int:
    """Back a VM up; incremental unless --full (or when it cannot be: the result says why)."""
    show = JobProgress(sys.stderr, f"backup of {args.vm}")
    with open_engine(args) as engine:
        outcome = engine.backups.create(
            args.vm, storage_domain=args.storage_domain or "",
            mode="full" if args.full else "incremental", description=args.description or "",
            timeout=args.timeout, progress=show)
    show.close()
    print_json({"changed": outcome.changed, "backup": outcome.entity})
    return 0


def backup_remove(args) -> int:
    """Remove a backup; a later backup built on it keeps restoring what it did."""
    with open_engine(args) as engine:
        outcome = engine.backups.remove(args.id)
    print_json({"changed": outcome.changed, "backup": outcome.entity})
    return 0


def backup_restore(args) -> int:
    """Restore a backup into a new VM (--vm-name) or one disk into a floating disk."""
    show = JobProgress(sys.stderr, f"restore of backup {args.id}")
    with open_engine(args) as engine:
        outcome = engine.backups.restore(
            args.id, vm_name=args.vm_name or "", disk_name=args.disk_name or "",
            disk=args.disk or "", storage_domain=args.storage_domain or "", progress=show)
    show.close()
    print_json({"changed": outcome.changed, **(outcome.entity or {})})
    return 0


def add_parsers(groups, command, engine_options) -> None:
    backup = groups.add_parser("backup", help="VM backups (restore points) and restores"
                               ).add_subparsers(dest="command", required=True)
    lister = command(backup, "list", backup_list, "list backups as JSON, oldest first")
    lister.add_argument("vm", nargs="?", help="only this VM's backups")
    lister.add_argument("--id", help="only this backup")
    create = command(backup, "create", backup_create,
                     "back a VM up: incremental when it can be, else full saying why")
    create.add_argument("vm")
    create.add_argument("--full", action="store_true", help="a full backup")
    create.add_argument("--storage-domain", help="where the backup files go (default: the "
                                                 "domain of the VM's first disk)")
    create.add_argument("--description")
    create.add_argument("--timeout", type=int, help="seconds the backup may take")
    remove = command(backup, "remove", backup_remove,
                     "remove a backup; a later one built on it is merged, not lost")
    remove.add_argument("id")
    restore = command(backup, "restore", backup_restore,
                      "restore a backup into a new VM or one disk into a new floating disk")
    restore.add_argument("id")
    target = restore.add_mutually_exclusive_group(required=True)
    target.add_argument("--vm-name", help="the new VM (the backed-up VM's settings)")
    target.add_argument("--disk-name", help="the new floating disk")
    restore.add_argument("--disk", help="with --disk-name: which disk of the backup")
    restore.add_argument("--storage-domain", help="where the restored disks go")
    for sub in (lister, create, remove, restore):
        engine_options(sub)
