"""``kestrel user set|list`` and ``kestrel token create|revoke``: bootstrapping access on
the engine host, before anyone can log in to the engine API. A password comes from
stdin only (argv shows in ps and shell history)."""

from __future__ import annotations

import sys

from engine_lib.aaa.roles import ROLES
from engine_lib.cli.common import open_engine, print_json


def _password_from_stdin() -> str:
    # One trailing newline is the shell's, not the password's.
    return sys.stdin.readline().removesuffix("\n").removesuffix("\r")


def user_set(args) -> int:
    password = _password_from_stdin() if args.password_stdin else None
    with open_engine(args) as engine:
        outcome = engine.users.ensure(args.name, password=password, update_password="always",
                                      enabled=not args.disable)
        changed = outcome.changed
        if args.role:
            changed |= engine.permissions.ensure(role=args.role, user=args.name).changed
        print_json({"changed": changed, "user": engine.users.info(args.name)[0],
                    "permissions": engine.permissions.info(user=args.name)})
    return 0


def user_list(args) -> int:
    with open_engine(args) as engine:
        print_json(engine.users.info())
    return 0


def token_create(args) -> int:
    with open_engine(args) as engine:
        outcome = engine.tokens.create(name=args.name, user=args.user, role=args.role or "",
                                       expires_in=args.expires_in)
    if not outcome.changed:
        print(f"kestrel: user {args.user} already has a token named {args.name}; its text "
              "is shown only when it is made (revoke it to make a new one)", file=sys.stderr)
        return 1
    print(outcome.entity["token"])
    return 0


def token_revoke(args) -> int:
    with open_engine(args) as engine:
        print_json({"changed": engine.tokens.revoke(name=args.name, user=args.user).changed})
    return 0


def add_parsers(groups, command, engine_options) -> None:
    user = groups.add_parser("user", help="users of the engine API").add_subparsers(
        dest="command", required=True)
    set_user = command(user, "set", user_set, "create or change a user (enabled unless "
                       "--disable) and grant it a role on the system")
    set_user.add_argument("name")
    set_user.add_argument("--role", choices=tuple(ROLES), help="grant this role on the system")
    set_user.add_argument("--password-stdin", action="store_true",
                          help="read the password (12 characters or more) from stdin")
    set_user.add_argument("--disable", action="store_true",
                          help="refuse its logins and tokens")
    listing = command(user, "list", user_list, "list users as JSON")
    token = groups.add_parser("token", help="API tokens of users").add_subparsers(
        dest="command", required=True)
    create = command(token, "create", token_create, "make a token and print it (only now)")
    create.add_argument("--role", choices=tuple(ROLES),
                        help="narrow the token to what this role allows")
    create.add_argument("--expires-in", type=int, metavar="SECONDS",
                        help="seconds until it expires (default: never)")
    revoke = command(token, "revoke", token_revoke, "revoke a token at once")
    for sub in (create, revoke):
        sub.add_argument("--user", required=True)
        sub.add_argument("--name", required=True)
    for sub in (set_user, listing, create, revoke):
        engine_options(sub)
