"""A throwaway appliance for the benchmark: config, PKI (`est-appliance init`), serve, stop."""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.auth import hash_password

APPLIANCE = [sys.executable, "-m", "appliance.cli"]
USER = "bench-gateway"
_LISTENING = re.compile(r"event=listening url=https://([0-9.]+):(\d+)/")


@dataclass(frozen=True)
class Lab:
    folder: Path
    config: Path
    key_algorithm: str
    password: str

    @property
    def certs(self) -> Path:
        return self.folder / "certs"

    def path(self, name: str) -> Path:
        return self.certs / name


def make_lab(
    folder: Path,
    key_algorithm: str,
    *,
    workers: int,
    thread_pool: int,
    cpu_affinity: str = "auto",
) -> Lab:
    password = secrets.token_urlsafe(18)
    config: dict[str, dict[str, Any]] = {
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "workers": workers,
            "cpu_affinity": cpu_affinity,
        },
        "pki": {"dir": "certs", "key_algorithm": key_algorithm},
        "auth": {"users": {USER: hash_password(password)}},
        "ledger": {"path": "var/ledger.db"},
        "logging": {"level": "INFO"},
    }
    if thread_pool:
        config["server"]["thread_pool"] = thread_pool
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [*APPLIANCE, "init", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"est-appliance init failed: {result.stderr}")
    return Lab(folder, path, key_algorithm, password)


class Server:
    """`est-appliance serve` of a lab, with its log in the lab folder."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.log = lab.folder / f"appliance-{time.strftime('%H%M%S')}.log"
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen(
                [*APPLIANCE, "serve", "--config", str(lab.config)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.host, self.port = self._wait_listening(timeout=120)

    def _wait_listening(self, timeout: float) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log.read_text(encoding="utf-8", errors="replace"))
            if match:
                return match.group(1), int(match.group(2))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the appliance did not start:\n{self.log.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
