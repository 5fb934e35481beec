"""``python -m spine_ui users add NAME [--role reviewer|admin] [--password-stdin]`` and ``users list``: the
file ``SPINE_USERS`` names (argon2 hashes, mode 0600)."""
from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("users", help="sign-in users (the file SPINE_USERS names)")
    ps = p.add_subparsers(dest="users_cmd", required=True)
    a = ps.add_parser("add", help="add a user or set a user's password and role")
    a.add_argument("name")
    a.add_argument("--role", choices=("reviewer", "admin"), default="reviewer")
    a.add_argument("--password-stdin", action="store_true", help="read the password from the first stdin line")
    a.add_argument("--file", help="users file (default: $SPINE_USERS)")
    ls = ps.add_parser("list", help="user names and roles")
    ls.add_argument("--file", help="users file (default: $SPINE_USERS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_ui.config import StoreConfig
    from spine_ui.services.auth import add_user, load_users

    path = Path(args.file) if args.file else StoreConfig.from_env().users_file
    if path is None:
        print("error: set SPINE_USERS to the users file (or pass --file)", file=sys.stderr)
        return 2
    try:
        if args.users_cmd == "list":
            for u in load_users(path).values():
                print(f"{u.name}\t{u.role}")
            return 0
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                print("error: the passwords differ", file=sys.stderr)
                return 2
        user = add_user(path, args.name, password, args.role)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"user {user.name} ({user.role}) written to {path}")
    return 0
