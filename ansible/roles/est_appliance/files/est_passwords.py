"""Keep config.yaml's bootstrap users in step with the inventory; run by the est_appliance role.

Reads {"user": "password", ...} as JSON on stdin and the current users from a root-only JSON
file of Argon2id hashes. A password that still verifies against its stored hash keeps that hash
(a new hash would carry a new salt, so re-hashing on every run would never be idempotent);
a new or changed password is hashed; unlisted users are dropped. The file is rewritten only
when something changed. Prints one JSON line, {"changed": bool, "users": [...]}, never a
password or a hash.

Usage: est_passwords.py HASHES_JSON < passwords.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.auth import hash_password


def _still_valid(hasher: PasswordHasher, stored: str | None, password: str) -> bool:
    if not stored:
        return False
    try:
        hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
    # Parameters raised since the hash was made: re-hash so every user gets today's cost.
    return not hasher.check_needs_rehash(stored)


def sync(hashes_path: Path, passwords: dict[str, str]) -> bool:
    current: dict[str, str] = {}
    if hashes_path.exists():
        current = json.loads(hashes_path.read_text(encoding="utf-8"))
    hasher = PasswordHasher()
    wanted = {
        user: current[user] if _still_valid(hasher, current.get(user), pw) else hash_password(pw)
        for user, pw in sorted(passwords.items())
    }
    if wanted == current and hashes_path.exists():
        return False
    tmp = hashes_path.with_name(f".{hashes_path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(wanted, handle, indent=2, sort_keys=True)
        handle.write("\n")
    tmp.replace(hashes_path)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__ or "")
        return 2
    passwords = json.load(sys.stdin)
    if not isinstance(passwords, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in passwords.items()
    ):
        sys.stderr.write("est_passwords: expected a JSON object of user name -> password\n")
        return 2
    changed = sync(Path(argv[1]), passwords)
    sys.stdout.write(json.dumps({"changed": changed, "users": sorted(passwords)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
