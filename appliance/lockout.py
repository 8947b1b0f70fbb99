"""Password guessing limits: failures per source address and per user, 429 with backoff.

Counted in the ledger, not in memory, so that every worker process (and every node sharing a
database) sees the same numbers: a guesser spreading attempts over workers gains nothing.

- Per address (an IPv6 address counts by its /64, which one host usually controls whole): past
  `max_failures_per_address` failures that address gets 429 for `backoff_seconds`, doubling with
  every failure after a lock, up to `max_backoff_seconds`. It answers 429 even for the right
  password while locked, or guessing would simply continue.
- Per user: past `max_failures_per_user` failures (from anywhere) the user is locked the same
  way, but only for addresses that have not logged in successfully as that user within
  `known_address_days`. A guesser elsewhere therefore cannot lock the real gateway out, and a
  distributed guesser still hits the limit.

The password check itself stays constant-time (Argon2 verify, a dummy hash for unknown users,
see auth.PasswordAuth); the lock is checked before it, so a locked address costs no Argon2.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import math

from appliance import audit
from appliance.clock import Clock
from appliance.config import LockoutConfig
from appliance.errors import TooManyRequests
from appliance.ledger import ADDRESS_SCOPE, USER_SCOPE, Ledger

log = logging.getLogger(__name__)

_MAX_USER_LENGTH = 128  # a user name is client-chosen text; bound what is stored
_PURGE_EVERY = 256  # failures between purges of forgotten counters (keeps the tables small)


def address_key(address: str) -> str:
    """The unit an address is counted by: the address itself, an IPv6 address by its /64."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "-"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def user_key(user: str) -> str:
    return user[:_MAX_USER_LENGTH]


class LoginGuard:
    """Decides whether a password attempt may be checked, and records its outcome."""

    def __init__(self, ledger: Ledger, config: LockoutConfig, clock: Clock) -> None:
        self._ledger = ledger
        self._config = config
        self._clock = clock
        self._failures_seen = 0

    def check(self, user: str | None, address: str) -> None:
        """Raise TooManyRequests when `address` (or `user`, from an unknown address) is locked."""
        now = self._clock()
        where = address_key(address)
        until = self._locked_until(ADDRESS_SCOPE, where, now)
        if until is not None:
            self._refuse(until, now, user, address, "address")
        if user is None:
            return
        until = self._locked_until(USER_SCOPE, user_key(user), now)
        if until is not None and not self._known(user, where, now):
            self._refuse(until, now, user, address, "user")

    def failed(self, user: str | None, address: str, reason: str) -> None:
        """Count a failed attempt (user None: malformed credentials, counted per address)."""
        now = self._clock()
        where = address_key(address)
        forget_before = now - dt.timedelta(seconds=self._config.window_seconds)
        self._failures_seen += 1
        if self._failures_seen % _PURGE_EVERY == 0:
            known_days = max(self._config.known_address_days, 1)
            self._ledger.forget_login_state(forget_before, now - dt.timedelta(days=known_days))
        address_failures = self._ledger.count_login_failure(
            ADDRESS_SCOPE, where, now, forget_before
        )
        self._maybe_lock(ADDRESS_SCOPE, where, address_failures, self._max(ADDRESS_SCOPE), now)
        user_failures = 0
        if user is not None:
            who = user_key(user)
            user_failures = self._ledger.count_login_failure(USER_SCOPE, who, now, forget_before)
            self._maybe_lock(USER_SCOPE, who, user_failures, self._max(USER_SCOPE), now)
        log.warning(
            "event=auth_failure method=password user=%s peer=%s reason=%s address_failures=%d "
            "user_failures=%d",
            _safe(user or "-"),
            address,
            reason,
            address_failures,
            user_failures,
        )
        audit.record(
            audit.AUTH_FAILURE,
            method="password",
            user=user,
            address=address,
            reason=reason,
            address_failures=address_failures,
            user_failures=user_failures,
        )

    def succeeded(self, user: str, address: str) -> None:
        """Remember that `address` logs in as `user`: a user-wide lock spares it."""
        self._ledger.record_login_success(user_key(user), address_key(address), self._clock())

    def _max(self, scope: str) -> int:
        if scope == ADDRESS_SCOPE:
            return self._config.max_failures_per_address
        return self._config.max_failures_per_user

    def _maybe_lock(
        self, scope: str, key: str, failures: int, limit: int, now: dt.datetime
    ) -> None:
        if failures < limit:
            return
        # Exponential backoff: the first lock lasts backoff_seconds, each failure after a lock
        # doubles it (failures cannot grow while locked: a locked attempt is never checked).
        exponent = min(failures - limit, 32)
        seconds = min(self._config.backoff_seconds * 2**exponent, self._config.max_backoff_seconds)
        until = now + dt.timedelta(seconds=seconds)
        self._ledger.lock_login(scope, key, until)
        log.warning(
            "event=login_locked scope=%s key=%s failures=%d seconds=%d",
            scope,
            _safe(key),
            failures,
            seconds,
        )

    def _locked_until(self, scope: str, key: str, now: dt.datetime) -> dt.datetime | None:
        state = self._ledger.login_throttle(scope, key)
        if state is None or state.locked_until is None or state.locked_until <= now:
            return None
        return state.locked_until

    def _known(self, user: str, where: str, now: dt.datetime) -> bool:
        if self._config.known_address_days == 0:
            return False
        since = self._ledger.login_known_since(user_key(user), where)
        return since is not None and since >= now - dt.timedelta(
            days=self._config.known_address_days
        )

    def _refuse(
        self, until: dt.datetime, now: dt.datetime, user: str | None, address: str, scope: str
    ) -> None:
        seconds = max(1, math.ceil((until - now).total_seconds()))
        log.warning(
            "event=login_throttled scope=%s user=%s peer=%s retry_after=%d",
            scope,
            _safe(user or "-"),
            address,
            seconds,
        )
        audit.record(
            audit.THROTTLED,
            method="password",
            user=user,
            address=address,
            scope=scope,
            retry_after=seconds,
        )
        what = "this address" if scope == "address" else "this user name from a new address"
        error = TooManyRequests(
            f"too many failed logins for {what}; try again in {seconds} seconds",
            retry_after=seconds,
        )
        error.audited = True
        raise error


def _safe(text: str) -> str:
    cleaned = "".join(c if c.isprintable() and c not in ' ="' else "?" for c in text)
    return cleaned[:64] or "-"
