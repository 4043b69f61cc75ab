"""``kestrel snapshot list|create|remove|restore``: a VM's snapshots (services.snapshots)."""

from __future__ import annotations

from engine_lib.cli.common import open_engine, print_json


def snapshot_list(args) -> int:
    with open_engine(args) as engine:
        print_json(engine.snapshots.info(args.vm, description=args.description or ""))
    return 0


def snapshot_create(args) -> int:
    with open_engine(args) as engine:
        outcome = engine.snapshots.create(args.vm, description=args.description or "",
                                          use_memory=args.use_memory)
    print_json({"changed": outcome.changed, "snapshot": outcome.entity})
    return 0


def snapshot_remove(args) -> int:
    """Delete a snapshot: its overlay is merged into the volume below (live if running)."""
    with open_engine(args) as engine:
        result = engine.snapshot_merge.delete(args.vm, args.snapshot_id)
    print_json({"changed": True, "result": result})
    return 0


def snapshot_restore(args) -> int:
    """Revert the stopped VM to a snapshot (a memory snapshot starts it again)."""
    with open_engine(args) as engine:
        outcome = engine.snapshots.restore(args.vm, args.snapshot_id)
    print_json({"changed": outcome.changed, "snapshot": outcome.entity})
    return 0


def add_parsers(groups, command, engine_options) -> None:
    snapshot = groups.add_parser("snapshot", help="VM snapshots: take, revert, delete"
                                 ).add_subparsers(dest="command", required=True)
    lister = command(snapshot, "list", snapshot_list, "list a VM's snapshots as JSON, oldest "
                     "first")
    lister.add_argument("--description", help="only those with exactly this description")
    create = command(snapshot, "create", snapshot_create,
                     "snapshot every disk of a VM (live if it runs, quiesced when its guest "
                     "agent answers)")
    create.add_argument("--description")
    create.add_argument("--use-memory", action="store_true",
                        help="save the running VM's memory too (a revert resumes it)")
    remove = command(snapshot, "remove", snapshot_remove,
                     "delete a snapshot (merge its overlay; live on a running VM)")
    restore = command(snapshot, "restore", snapshot_restore,
                      "revert a stopped VM to a snapshot; newer snapshots are removed")
    for sub in (lister, create, remove, restore):
        sub.add_argument("vm", help="the VM's name")
        engine_options(sub)
    for sub in (remove, restore):
        sub.add_argument("snapshot_id")
