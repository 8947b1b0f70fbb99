"""`est-appliance passwd` and `admin-passwd`: one way to set or remove a stored password."""

from __future__ import annotations

import argparse
import getpass
import sys

from appliance.auth import hash_password
from appliance.config import load_config
from appliance.users_file import set_user_hash

MIN_LENGTH = 12


def add_password_arguments(parser: argparse.ArgumentParser, *, who: str) -> None:
    """The arguments `passwd` and `admin-passwd` share."""
    parser.add_argument("user")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )
    parser.add_argument("--delete", action="store_true", help=f"remove the {who}")


def change_password(args: argparse.Namespace, *, section: str, who: str) -> int:
    """Set (or with --delete, remove) `args.user` under `<section>.users` in config.yaml."""
    load_config(args.config)  # refuse to edit a file that does not validate
    name = f"{who} {args.user}".strip()
    if args.delete:
        set_user_hash(args.config, args.user, None, section=section)
        print(f"removed {name} from {args.config}")
        return 0
    password = _new_password(args, name)
    if password is None:
        return 2
    set_user_hash(args.config, args.user, hash_password(password), section=section)
    load_config(args.config)  # the result must validate (e.g. no name both operator and user)
    print(f"stored an Argon2id hash for {name} in {args.config}; restart the appliance")
    return 0


def _new_password(args: argparse.Namespace, name: str) -> str | None:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"New password for {name}: ")
        if getpass.getpass("Repeat it: ") != password:
            print("est-appliance: the passwords differ; nothing changed", file=sys.stderr)
            return None
    if len(password) < MIN_LENGTH:
        print(
            f"est-appliance: use at least {MIN_LENGTH} characters; nothing changed",
            file=sys.stderr,
        )
        return None
    return password
