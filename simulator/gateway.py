"""The IQE gateway: fetches the CA, enrolls on behalf of pumps, classifies every failure.

Two enrollment approaches, as the integration guide describes them:

- `password`: `POST /bootstrap` with HTTP Basic and the CSR as base64 text with
  `Content-Transfer-Encoding: base64` — what the IQE UI does;
- `ra`: `POST /simpleenroll` with the RA certificate and key as TLS client certificate and the
  CSR as raw DER (RFC 7030 §3.3.2: the RA authenticates itself, §4.2.1 the request).

Trust is the CA file the gateway was given, or, without one, the CA fetched from /cacerts and
pinned by its SHA-256 fingerprint (RFC 7030 §4.1.1: an unauthenticated /cacerts must be checked
out of band — the operator compares the fingerprint with what `est-appliance init` printed).

Each worker thread gets its own `requests.Session`, so a fleet of enrollments reuses TLS
connections (keep-alive) instead of paying a handshake per pump. Proxies from the environment
are never used: the gateway talks to the appliance directly.
"""

from __future__ import annotations

import base64
import enum
import logging
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn
from urllib.parse import urlsplit

import requests
import urllib3
from cryptography import x509

from simulator.pkcs7 import ExpectedFormat, read_certs_only
from simulator.pki import certs_pem, fingerprint, write_file
from simulator.pump import ChainError, Pump
from simulator.troubleshooting import FIXES, Branch, EnrollmentError

log = logging.getLogger(__name__)

EST_PATH = "/.well-known/est"
CSR_MEDIA_TYPE = "application/pkcs10"


class Approach(enum.Enum):
    PASSWORD = "password"  # noqa: S105 - the approach's name, not a secret
    RA = "ra"


@dataclass(frozen=True)
class Enrollment:
    """A successful enrollment: what came back and how long it took."""

    certificates: tuple[x509.Certificate, ...]
    seconds: float
    request_id: str | None


def est_base(url: str) -> str:
    """`https://host:port` or `.../.well-known/est` -> the EST base URL without a slash."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{url!r}: the appliance URL must be https://HOST:PORT")
    path = parts.path.rstrip("/")
    if not path.endswith(EST_PATH):
        path = path + EST_PATH
    return f"https://{parts.netloc}{path}"


class Gateway:
    """The IQE gateway model. Thread-safe: each thread uses its own keep-alive session."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | None = None,
        pin: str | None = None,
        approach: Approach | str = Approach.PASSWORD,
        username: str | None = None,
        password: str | None = None,
        ra_cert: Path | None = None,
        ra_key: Path | None = None,
        response_format: ExpectedFormat = "der",
        timeout: float = 15.0,
        retries: int = 0,
    ) -> None:
        self.base = est_base(url)
        # Like the IQE gateway: a request whose connection was refused or dropped (a node of a
        # cluster restarting behind the balancer) is sent again, at most `retries` times.
        self.retries = retries
        self.approach = Approach(approach)
        self.response_format: ExpectedFormat = response_format
        self.timeout = timeout
        self.username = username
        self.password = password
        self.ra_cert = ra_cert
        self.ra_key = ra_key
        self.pin = _normalize_fingerprint(pin) if pin else None
        self.ca_file = Path(ca_file) if ca_file is not None else None
        self.trusted_fingerprints: tuple[str, ...] = ()
        self._trust_dir: Path | None = None
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    # -- trust ----------------------------------------------------------------------------

    def pin_ca(self) -> tuple[str, ...]:
        """Fetch /cacerts without verifying TLS, check it against the pin (if any), and trust
        it from now on. Returns the fingerprints for the operator to compare out of band."""
        body, headers = self._get_unverified("cacerts")
        certs = read_certs_only(
            body,
            self.response_format,
            transfer_encoding=headers.get("Content-Transfer-Encoding"),
        )
        prints = tuple(fingerprint(c) for c in certs)
        if self.pin is not None and self.pin not in prints:
            raise EnrollmentError(
                Branch.TLS_TRUST,
                f"/cacerts served a CA with fingerprint {prints[0]}, not the pinned "
                f"{self.pin}: this may not be your appliance.",
                "compare with the fingerprint `est-appliance init` printed on the appliance; "
                "never enroll against a server whose CA you have not confirmed.",
            )
        self._trust_dir = Path(tempfile.mkdtemp(prefix="iqe-gateway-trust-"))
        trust = self._trust_dir / "pinned-ca.pem"
        write_file(trust, certs_pem(certs))
        self.ca_file = trust
        self.trusted_fingerprints = prints
        log.info("event=ca_pinned fingerprint=%s pinned=%s", prints[0], self.pin is not None)
        return prints

    def fetch_cacerts(self) -> list[x509.Certificate]:
        """RFC 7030 §4.1: the CA chain, over verified TLS."""
        response, _seconds = self._request("GET", "cacerts")
        certs = read_certs_only(
            response.content,
            self.response_format,
            transfer_encoding=response.headers.get("Content-Transfer-Encoding"),
        )
        if not self.trusted_fingerprints:
            self.trusted_fingerprints = tuple(fingerprint(c) for c in certs)
        return certs

    # -- enrollment -----------------------------------------------------------------------

    def enroll(self, csr_der: bytes) -> Enrollment:
        """Send one pump's CSR by the configured approach; EnrollmentError on any failure."""
        self._check_credentials()
        if self.approach is Approach.PASSWORD:
            # What the IQE UI sends: base64 text, declared as such (RFC 7030 §4.2.1).
            body = base64.encodebytes(csr_der)
            headers = {"Content-Type": CSR_MEDIA_TYPE, "Content-Transfer-Encoding": "base64"}
            operation = "bootstrap"
        else:
            body = csr_der
            headers = {"Content-Type": CSR_MEDIA_TYPE}
            operation = "simpleenroll"
        response, seconds = self._request("POST", operation, data=body, headers=headers)
        certs = read_certs_only(
            response.content,
            self.response_format,
            transfer_encoding=response.headers.get("Content-Transfer-Encoding"),
        )
        return Enrollment(tuple(certs), seconds, response.headers.get("X-Request-Id"))

    def trusted_ca_file(self) -> Path:
        """The CA file in use, pinning /cacerts first when none was given."""
        if self.ca_file is None:
            self.pin_ca()
        if self.ca_file is None:  # pin_ca sets it or raises
            raise EnrollmentError(Branch.TLS_TRUST, "no CA to trust.", FIXES[Branch.TLS_TRUST])
        return self.ca_file

    def enroll_pump(self, pump: Pump, ca_chain: Sequence[x509.Certificate]) -> Enrollment:
        """Enroll `pump` and install its bundle; a certificate that does not fit the pump or
        does not chain to `ca_chain` is a `certificate-chain` failure."""
        enrollment = self.enroll(pump.csr_der)
        try:
            pump.install(enrollment.certificates, ca_chain)
        except ChainError as exc:
            raise EnrollmentError(
                Branch.CHAIN, str(exc), FIXES[Branch.CHAIN], request_id=enrollment.request_id
            ) from None
        return enrollment

    # -- plumbing -------------------------------------------------------------------------

    def _check_credentials(self) -> None:
        if self.approach is Approach.PASSWORD and (self.username is None or self.password is None):
            raise ValueError("the password approach needs a user name and a password")
        if self.approach is Approach.RA and (self.ra_cert is None or self.ra_key is None):
            raise ValueError("the RA approach needs the RA certificate and its key")

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
        if self._trust_dir is not None:
            shutil.rmtree(self._trust_dir, ignore_errors=True)
            self._trust_dir = None

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            if self.ca_file is None:
                self.pin_ca()
            session = requests.Session()
            session.trust_env = False  # loopback/LAN only: never an environment proxy
            session.verify = str(self.ca_file)
            # Credentials only for the configured approach: the RA approach must not fall back
            # to a password, nor the password approach present a certificate.
            if self.approach is Approach.RA and self.ra_cert and self.ra_key:
                session.cert = (str(self.ra_cert), str(self.ra_key))
            elif self.approach is Approach.PASSWORD and self.username and self.password:
                session.auth = (self.username, self.password)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _request(
        self,
        method: str,
        operation: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[requests.Response, float]:
        url = f"{self.base}/{operation}"
        started = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                response = self._session().request(
                    method, url, data=data, headers=headers, timeout=self.timeout
                )
                break
            except requests.exceptions.RequestException as exc:
                if attempt == self.retries or not _dropped(exc):
                    return self._failed(exc, url)
                log.warning(
                    "event=retry operation=%s attempt=%d error=%s", operation, attempt + 1, exc
                )
                self._drop_session()
                time.sleep(0.2 * (attempt + 1))
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            raise http_error(response, self.approach)
        return response, seconds

    def _drop_session(self) -> None:
        """Forget this thread's keep-alive session: its connection died with the node."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _failed(self, exc: requests.exceptions.RequestException, url: str) -> NoReturn:
        if isinstance(exc, requests.exceptions.SSLError):
            raise _tls_error(exc, self) from None
        if isinstance(exc, requests.exceptions.Timeout):
            raise EnrollmentError(
                Branch.CONNECT,
                f"no answer from {url} within {self.timeout:.0f} s.",
                FIXES[Branch.CONNECT],
            ) from None
        if isinstance(exc, requests.exceptions.ConnectionError):
            raise _connection_error(exc, url, self) from None
        raise exc

    def _get_unverified(
        self, operation: str
    ) -> tuple[bytes, requests.structures.CaseInsensitiveDict[str]]:
        url = f"{self.base}/{operation}"
        try:
            with warnings.catch_warnings():
                # Deliberate: RFC 7030 §4.1.1 bootstrap, checked by fingerprint right after.
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                with requests.Session() as session:
                    session.trust_env = False
                    response = session.get(url, verify=False, timeout=self.timeout)
        except requests.exceptions.ConnectionError as exc:
            raise _connection_error(exc, url, self) from None
        if response.status_code != 200:
            raise http_error(response, self.approach)
        return response.content, response.headers


def http_error(response: requests.Response, approach: Approach) -> EnrollmentError:
    """A non-200 answer as its branch of the tree, carrying the server's own sentence."""
    status = response.status_code
    server_message = response.text.strip() if response.content else ""
    request_id = response.headers.get("X-Request-Id")
    said = f": {server_message}" if server_message else ""
    if status == 401:
        if approach is Approach.PASSWORD:
            fix = (
                "set the user name and password the appliance knows in the gateway "
                "(on the appliance: `est-appliance passwd USER`)."
            )
        else:
            fix = (
                "configure the gateway's client certificate as this appliance's "
                "iqe-ra-cert.pem with iqe-ra-key.pem."
            )
        branch = Branch.CREDENTIALS
    elif status == 403:
        branch, fix = Branch.AUTHORIZATION, FIXES[Branch.AUTHORIZATION]
    elif status in (404, 405):
        branch = Branch.REQUEST
        fix = f"use the URL https://HOST:PORT{EST_PATH}/ and the operation's method."
    elif 400 <= status < 500:
        branch = Branch.REQUEST
        fix = "correct the request as the appliance's message says" + (
            " (a new CSR with an RSA-2048 or P-256 key)." if status == 400 else "."
        )
    else:
        branch = Branch.SERVER
        fix = (
            f"give the appliance operator request id {request_id}; the detail is in its log."
            if request_id
            else FIXES[Branch.SERVER]
        )
    return EnrollmentError(
        branch,
        f"HTTP {status} from {response.url.rsplit('/', 1)[-1]}{said}",
        fix,
        status=status,
        server_message=server_message or None,
        request_id=request_id,
    )


def _tls_error(exc: requests.exceptions.SSLError, gateway: Gateway) -> EnrollmentError:
    text = str(exc)
    lowered = text.lower()
    if "certificate verify failed" in lowered:
        if "mismatch" in lowered or "hostname" in lowered:
            return EnrollmentError(
                Branch.TLS_TRUST,
                f"the appliance's certificate does not name {urlsplit(gateway.base).hostname}.",
                "use a host name or address from the appliance's pki.server_sans in the URL.",
            )
        return EnrollmentError(
            Branch.TLS_TRUST,
            f"the appliance's TLS certificate does not chain to {gateway.ca_file}.",
            FIXES[Branch.TLS_TRUST],
        )
    # TLS 1.3 checks the client certificate after the client has finished its handshake: a
    # rejected RA certificate then shows up as an alert or, when the server's close overtakes
    # the alert, as an EOF on the first read.
    rejected_ra = gateway.approach is Approach.RA and "eof occurred" in lowered
    if rejected_ra or any(
        word in lowered
        for word in ("unknown ca", "bad certificate", "certificate required", "alert")
    ):
        return EnrollmentError(
            Branch.TLS_CLIENT_CERT,
            f"the appliance rejected the gateway's client certificate in the TLS handshake "
            f"({_short(text)}).",
            FIXES[Branch.TLS_CLIENT_CERT],
        )
    return EnrollmentError(
        Branch.TLS_TRUST, f"TLS handshake failed: {_short(text)}.", FIXES[Branch.TLS_TRUST]
    )


def _connection_error(
    exc: requests.exceptions.ConnectionError, url: str, gateway: Gateway
) -> EnrollmentError:
    text = str(exc)
    # TLS 1.3: the server's verdict on our client certificate arrives after the handshake,
    # so a rejected RA certificate surfaces as a reset connection on the first read.
    if gateway.approach is Approach.RA and (
        "reset" in text.lower() or "unknown ca" in text.lower() or "aborted" in text.lower()
    ):
        return EnrollmentError(
            Branch.TLS_CLIENT_CERT,
            f"the appliance closed the connection after the TLS handshake ({_short(text)}).",
            FIXES[Branch.TLS_CLIENT_CERT],
        )
    return EnrollmentError(
        Branch.CONNECT, f"cannot connect to {url} ({_short(text)}).", FIXES[Branch.CONNECT]
    )


def _short(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def _normalize_fingerprint(value: str) -> str:
    hexdigits = value.replace(":", "").replace(" ", "").upper()
    if len(hexdigits) != 64 or any(c not in "0123456789ABCDEF" for c in hexdigits):
        raise ValueError(f"{value!r} is not a SHA-256 fingerprint (64 hex digits)")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 64, 2))


def _dropped(exc: requests.exceptions.RequestException) -> bool:
    """A connection refused, reset or closed mid-request: worth sending again. Certificate
    problems and timeouts are answers, not accidents."""
    if isinstance(exc, requests.exceptions.Timeout):
        return False
    if isinstance(exc, requests.exceptions.SSLError):
        text = str(exc)
        return "EOF" in text or "reset" in text.lower()
    return isinstance(exc, requests.exceptions.ConnectionError)
