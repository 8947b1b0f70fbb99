"""A throwaway Debian host with real systemd as PID 1, reachable over ssh on loopback.

`systemd-nspawn --volatile=overlay` boots the cached bookworm root of scripts/deploy/rootfs.sh
with every change kept in memory, so each run starts from the same clean host. The container
shares this machine's network namespace (no private network, no routes): its sshd and every
service the playbook installs listen on 127.0.0.1 ports chosen here, and nothing else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTFS_SCRIPT = REPO / "scripts" / "deploy" / "rootfs.sh"
DEPLOY_USER = "deploy"  # the rootfs's sudo-enabled account


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_rootfs() -> Path:
    """The unpacked root folder, built (about a minute) and cached on first use."""
    result = subprocess.run(
        [str(ROOTFS_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rootfs.sh failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class Container:
    root: Path
    folder: Path  # per-run files: the ssh key, sshd drop-in, console log
    name: str = field(default_factory=lambda: f"est-deploy-{os.getpid()}")
    ssh_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def key(self) -> Path:
        return self.folder / "id_ed25519"

    @property
    def console_log(self) -> Path:
        return self.folder / "console.log"

    def start(self, timeout: float = 60) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
        )
        authorized = self.folder / "authorized_keys"
        authorized.write_bytes(self.key.with_suffix(".pub").read_bytes())
        authorized.chmod(0o644)
        sshd_conf = self.folder / "sshd-listen.conf"
        # Loopback and a free port only: the container shares this machine's network.
        sshd_conf.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.ssh_port}\nPasswordAuthentication no\n",
            encoding="utf-8",
        )
        with self.console_log.open("wb") as console:
            self.process = subprocess.Popen(
                [
                    "systemd-nspawn",
                    f"--directory={self.root}",
                    f"--machine={self.name}",
                    "--boot",
                    "--volatile=overlay",
                    "--register=no",
                    "--keep-unit",
                    "--console=passive",
                    f"--bind-ro={authorized}:/etc/ssh/authorized_keys.d/{DEPLOY_USER}",
                    f"--bind-ro={sshd_conf}:/etc/ssh/sshd_config.d/50-listen.conf",
                    # Arguments after the options go to systemd as its command line: start
                    # sshd, which the image leaves disabled.
                    "systemd.wants=ssh.service",
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.console_log.read_text()}")
            probe = self.ssh("systemctl is-system-running --wait", check=False, timeout=30)
            # "degraded" is booted too (a unit failed); the tests then look at what matters.
            if probe.stdout.strip() in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the container did not come up: {self.console_log.read_text()}")

    def ssh_args(self) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.key),
            "-p",
            str(self.ssh_port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            f"{DEPLOY_USER}@127.0.0.1",
        ]

    def ssh(
        self, command: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` as root in the container (through the deploy account's sudo)."""
        result = subprocess.run(
            [*self.ssh_args(), f"sudo sh -c {_quote(command)}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the container: {command!r} exited {result.returncode}: {result.stderr}"
            )
        return result

    def stop(self) -> None:
        """SIGTERM makes nspawn power the container off cleanly (about 2 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # The container's init is nspawn's child; killing it ends every process inside.
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            for pid in children.read_text().split() if children.exists() else []:
                os.kill(int(pid), signal.SIGKILL)
            self.process.kill()
            self.process.wait(timeout=10)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
