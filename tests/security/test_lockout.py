"""Password guessing (issue 7): per-address and per-user counting, 429 + Retry-After with
exponential backoff, the real gateway at another address unaffected, counters shared by worker
processes, every failure in the audit log, and the password never in any log."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.auth import PasswordAuth, hash_password
from appliance.config import LockoutConfig
from appliance.errors import TooManyRequests, Unauthorized
from appliance.ledger import SqliteLedger
from appliance.lockout import LoginGuard, address_key
from tests.support import (
    LAB_PASSWORD,
    LAB_USER,
    RunningAppliance,
    curl,
    make_csr,
    make_lab,
    start_appliance,
)

ATTACKER = "127.0.0.2"
SECOND_ATTACKER = "127.0.0.3"
GATEWAY = "127.0.0.1"


class FakeClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    opened = SqliteLedger(tmp_path / "ledger.db")
    yield opened
    opened.close()


def _guard(ledger: SqliteLedger, clock: FakeClock, **settings: int) -> LoginGuard:
    config = LockoutConfig(
        **{
            "max_failures_per_address": 3,
            "max_failures_per_user": 5,
            "window_seconds": 600,
            "backoff_seconds": 30,
            "max_backoff_seconds": 200,
            **settings,
        }
    )
    return LoginGuard(ledger, config, clock)


def _retry_after(guard: LoginGuard, user: str | None, address: str) -> int | None:
    try:
        guard.check(user, address)
    except TooManyRequests as error:
        assert error.status == 429
        assert error.headers()["Retry-After"] == str(error.retry_after)
        return error.retry_after
    return None


# --- the policy, with a controlled clock -------------------------------------------------------


def test_address_locked_after_limit_with_exponential_backoff(ledger: SqliteLedger) -> None:
    clock = FakeClock()
    guard = _guard(ledger, clock)
    for _ in range(2):
        guard.failed("alice", ATTACKER, "wrong password")
    assert _retry_after(guard, "alice", ATTACKER) is None  # below the limit: still checked
    guard.failed("alice", ATTACKER, "wrong password")
    assert _retry_after(guard, "alice", ATTACKER) == 30
    assert _retry_after(guard, None, ATTACKER) == 30  # malformed credentials too
    assert _retry_after(guard, "alice", GATEWAY) is None  # another address is unaffected
    clock.advance(10)
    assert _retry_after(guard, "alice", ATTACKER) == 20
    # Each failure after a lock doubles it, up to the maximum.
    expected = [60, 120, 200, 200]
    for seconds in expected:
        clock.advance(_retry_after(guard, "alice", ATTACKER) or 0)
        assert _retry_after(guard, "alice", ATTACKER) is None
        guard.failed("alice", ATTACKER, "wrong password")
        assert _retry_after(guard, "alice", ATTACKER) == seconds


def test_failures_are_forgotten_after_a_quiet_window(ledger: SqliteLedger) -> None:
    clock = FakeClock()
    guard = _guard(ledger, clock)
    for _ in range(2):
        guard.failed("alice", ATTACKER, "wrong password")
    clock.advance(601)
    guard.failed("alice", ATTACKER, "wrong password")
    assert _retry_after(guard, "alice", ATTACKER) is None  # count restarted at 1
    # Negative control: within the window the third failure locks.
    guard.failed("alice", ATTACKER, "wrong password")
    guard.failed("alice", ATTACKER, "wrong password")
    assert _retry_after(guard, "alice", ATTACKER) == 30


def test_user_lock_spares_addresses_that_logged_in_before(ledger: SqliteLedger) -> None:
    clock = FakeClock()
    guard = _guard(ledger, clock, max_failures_per_address=100)
    guard.succeeded("alice", GATEWAY)
    # A distributed guess: 5 failures for alice from five addresses.
    for i in range(5):
        guard.failed("alice", f"10.0.0.{i}", "wrong password")
    assert _retry_after(guard, "alice", "10.0.0.99") == 30  # a new address: locked
    assert _retry_after(guard, "alice", GATEWAY) is None  # the gateway's address: spared
    assert _retry_after(guard, "bob", "10.0.0.99") is None  # other users: unaffected
    # Known addresses expire.
    clock.advance(31 * 86400)
    for i in range(5):
        guard.failed("alice", f"10.0.1.{i}", "wrong password")
    assert _retry_after(guard, "alice", GATEWAY) == 30


def test_ipv6_addresses_count_by_their_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") != address_key("192.0.2.8")


def test_unknown_users_cost_the_same_argon2_check(
    ledger: SqliteLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constant time: an unknown user name is verified against a dummy hash, so the answer
    takes as long as a wrong password for a real user."""
    calls: list[str] = []
    real_verify = PasswordAuth._verify

    def counting_verify(stored: str, password: str) -> bool:
        calls.append(stored)
        return real_verify(stored, password)

    password_auth = PasswordAuth(
        {"alice": hash_password("correct horse battery")}, "EST", 0, guard=None
    )
    monkeypatch.setattr(PasswordAuth, "_verify", staticmethod(counting_verify))
    for user in ("alice", "mallory"):
        token = base64.b64encode(f"{user}:guess-guess".encode()).decode()
        with pytest.raises(Unauthorized, match="user name or password is wrong"):
            password_auth.authenticate(f"Basic {token}")
    assert len(calls) == 2, "both the real and the unknown user ran one Argon2 verification"
    # Same algorithm and cost parameters ($argon2id$v=19$m=...,t=...,p=...), different hashes.
    assert calls[0] != calls[1]
    assert calls[0].split("$")[1:4] == calls[1].split("$")[1:4]
    assert calls[0].startswith("$argon2id$")


# --- live: two worker processes sharing the counters -------------------------------------------

LIMIT = 4


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAppliance]:
    lab = make_lab(
        tmp_path_factory.mktemp("lockout"),
        {
            # Two worker processes: each connection may land on either, yet the counters hold.
            "server": {"workers": 2},
            "auth": {
                "lockout": {
                    "max_failures_per_address": LIMIT,
                    "max_failures_per_user": 100,
                    "backoff_seconds": 120,
                }
            },
        },
    )
    running = start_appliance(lab)
    yield running
    running.stop()


def _bootstrap(
    appliance: RunningAppliance, csr: Path, password: str, source: str
) -> tuple[int, dict[str, str], bytes]:
    lab = appliance.lab
    return curl(
        [
            "--interface",
            source,
            "--cacert",
            str(lab.ca_cert),
            "-u",
            f"{LAB_USER}:{password}",
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            f"@{csr}",
            appliance.url("bootstrap"),
        ]
    )


def test_guessing_address_gets_429_while_gateway_enrolls(
    guarded: RunningAppliance, tmp_path: Path
) -> None:
    csr, _ = make_csr(tmp_path, "NPP-LOCK-1")
    statuses = [_bootstrap(guarded, csr, f"wrong-{i}", ATTACKER)[0] for i in range(LIMIT)]
    assert statuses == [401] * LIMIT, statuses
    status, headers, body = _bootstrap(guarded, csr, LAB_PASSWORD, ATTACKER)
    assert status == 429, body
    assert 1 <= int(headers["retry-after"]) <= 120
    assert b"too many failed logins for this address" in body
    # The right password from the gateway's address still enrolls.
    status, _h, body = _bootstrap(guarded, csr, LAB_PASSWORD, GATEWAY)
    assert status == 200, body
    # Negative control: a third address with a wrong password is only 401, not locked.
    status, _h, _b = _bootstrap(guarded, csr, "wrong", SECOND_ATTACKER)
    assert status == 401


def test_every_failure_is_audited_without_secrets(
    guarded: RunningAppliance, tmp_path: Path
) -> None:
    audit_path = guarded.lab.folder / "var" / "audit.log"
    assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600
    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    failures = [r for r in records if r["event"] == "auth_failure" and r["address"] == ATTACKER]
    assert len(failures) == LIMIT, failures
    assert all(r["user"] == LAB_USER and r["method"] == "password" for r in failures)
    assert [r["address_failures"] for r in failures] == list(range(1, LIMIT + 1))
    throttled = [r for r in records if r["event"] == "throttled"]
    assert throttled and throttled[0]["address"] == ATTACKER
    issued = [r for r in records if r["event"] == "issued"]
    assert any(
        r["subject"] == "CN=NPP-LOCK-1"
        and r["address"] == GATEWAY
        and r["by"] == f"password:{LAB_USER}"
        for r in issued
    ), issued
    # The lab password was used above; it must appear in neither the audit log nor the log.
    for path in (audit_path, guarded.log):
        text = path.read_text(errors="replace")
        assert LAB_PASSWORD not in text, f"the password leaked into {path}"
        assert "wrong-0" not in text, f"a guessed password leaked into {path}"
        assert "PRIVATE KEY" not in text
    assert os.stat(audit_path).st_size > 0
