"""Edit `auth.users` in config.yaml without disturbing the rest of the file (comments kept)."""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from appliance.errors import ConfigError


def set_user_hash(
    config_path: Path, user: str, password_hash: str | None, *, section: str = "auth"
) -> None:
    """Set (or with None, remove) one user's hash in `<section>.users` (auth: EST bootstrap
    users; admin: operators) and write the file back atomically."""
    yaml = YAML()
    yaml.preserve_quotes = True
    try:
        document = yaml.load(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: config file not found") from None
    if document is None:
        document = CommentedMap()
    auth = document.get(section)
    if auth is None:
        auth = document[section] = CommentedMap()
    users = auth.get("users")
    if users is None:
        users = auth["users"] = CommentedMap()
    if password_hash is None:
        if user not in users:
            raise ConfigError(f"{config_path}: {section}.users has no user '{user}'")
        del users[user]
    else:
        users[user] = password_hash
    tmp = config_path.with_name(f".{config_path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        yaml.dump(document, handle)
    tmp.chmod(config_path.stat().st_mode & 0o777)
    tmp.replace(config_path)
