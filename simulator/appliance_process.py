"""Start and stop an EST appliance process for the lab and the tests, on 127.0.0.1.

The appliance is started as `python -m appliance.cli serve` with port 0 and is ready when its
log says `event=listening url=...`; that URL (with the port the kernel chose) is the address.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from simulator.process import child_preexec

EST_APPLIANCE = (sys.executable, "-m", "appliance.cli")
_LISTENING = re.compile(r"event=listening url=(https://\S+?)/\.well-known/est/")


class ApplianceStartError(RuntimeError):
    """The appliance exited or did not announce its URL in time; carries its log."""


def write_config(
    folder: Path,
    *,
    users: Mapping[str, str],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """A lab config.yaml in `folder`: 127.0.0.1, port 0, PKI in certs/, ledger in var/."""
    config: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "pki": {"dir": "certs"},
        "auth": {"users": dict(users)},
        "ledger": {"path": "var/ledger.db"},
    }
    for section, values in (overrides or {}).items():
        config.setdefault(section, {}).update(values)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def spawn(
    config: Path, log: Path, *extra: str, timeout: float = 20
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `est-appliance serve`; returns the process and its base URL (https://127.0.0.1:P)."""
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*EST_APPLIANCE, "serve", "--config", str(config), *extra],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=child_preexec,  # noqa: PLW1509 - only sets the parent-death signal
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(log.read_text(encoding="utf-8", errors="replace"))
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    terminate(process)
    raise ApplianceStartError(f"appliance did not start:\n{log.read_text(errors='replace')}")


def terminate(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ApplianceProcess:
    """A running appliance: its base URL, its log, and `stop()`."""

    def __init__(self, config: Path, log: Path, *extra: str, timeout: float = 20) -> None:
        self.config = config
        self.log = log
        self.process, self.base = spawn(config, log, *extra, timeout=timeout)

    def url(self, operation: str = "") -> str:
        return f"{self.base}/.well-known/est/{operation}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        terminate(self.process)


@contextmanager
def running(config: Path, log: Path, *extra: str) -> Iterator[ApplianceProcess]:
    appliance = ApplianceProcess(config, log, *extra)
    try:
        yield appliance
    finally:
        appliance.stop()
