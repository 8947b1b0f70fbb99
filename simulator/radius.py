"""The access point side: a real FreeRADIUS server configured for EAP-TLS, on loopback.

`RadiusServer` copies Debian's /etc/freeradius/3.0 into its own folder and changes only what
the lab needs:

- `radiusd.conf`: `raddbdir` points at the copy (`-d` alone still resolves `${certdir}` under
  /etc), logs and pid file stay in the folder, no switch to the `freerad` user (so files in a
  private temp folder stay readable), and `reject_delay = 0` (else every rejection costs 1 s).
- the `eap` module: EAP-TLS only, our server certificate, `ca_file` = the EST CA and nothing
  else — no `ca_path` with certificates in it (raddb/certs would trust everything there) and
  never the system bundle — and `check_cert_cn = %{User-Name}`, so a pump can only
  authenticate as the CN in its certificate.
- one virtual server listening on 127.0.0.1 and a freshly probed free UDP port (not `-i/-p`:
  such listeners are not tied to a virtual server and reject everything), and one client,
  127.0.0.1, with a random secret.

Two ways to run it. `debug=True` (the default: the lab, diagnose, tests) is `freeradius -X`:
single-threaded (-X implies -s) and a full trace of every exchange in the log, ~20 KB per
authentication. `debug=False` (fleet runs) is `freeradius -f -l LOG`: the thread pool, sized by
`threads`, and only info/error lines, which still carry every rejection's reason ("OpenSSL says
error 20 : unable to get local issuer certificate", "Certificate CN (...) does not match
specified value (...)", "certificate revoked"), so `reason_since` explains rejections in both.
Both print "Ready to process requests" when ready.

`crl_files` turns on `check_crl = yes`; FreeRADIUS then needs a CRL for every trusted CA.
It reads them at start, so a new CRL means `set_crl_files(...)` and `restart()` (about 60 ms),
unless `crl_reload_seconds` is set: then `ca_path_reload_interval` makes FreeRADIUS re-read
its trust file that often (checked when an EAP-TLS session starts), and `reload_crl_files(...)`
rewrites the file in place with no restart, as the Ansible radius role does on a real host.
FreeRADIUS 3.2 re-reads only when `ca_path` is set (here an empty folder: trust still comes from
`ca_file` alone) and raises any interval below 300 s to 300 s.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from simulator.pki import create_ca, issue_server_certificate, write_file
from simulator.process import child_preexec

log = logging.getLogger(__name__)

DEBIAN_RADDB = Path("/etc/freeradius/3.0")
READY = "Ready to process requests"
INSTALL_HINT = "apt-get install -y freeradius eapoltest"


# FreeRADIUS debug lines that explain a rejection, most specific first.
_REJECTION_REASONS = (
    re.compile(r"(Certificate CN \(.*?\) does not match specified value \(.*?\))"),
    re.compile(r"OpenSSL says error \d+ : (.+)"),
    re.compile(r"Alert write:fatal:(.+)"),
    re.compile(r"ERROR: (.+)"),
)


class RadiusError(RuntimeError):
    """FreeRADIUS is missing, its configuration is wrong, or it did not start."""


# FreeRADIUS 3.2 resets a lower ca_path_reload_interval to this.
MIN_CRL_RELOAD_SECONDS = 300


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class RadiusServer:
    """FreeRADIUS for EAP-TLS on 127.0.0.1; a context manager that starts and stops it.

    `ca_file`: the CA(s) whose client certificates are accepted (the EST CA).
    `server_cert`/`server_key`: the RADIUS server's own certificate. Without them a throwaway
    CA in `folder` issues one; `server_ca_file` is then what supplicants must trust.
    """

    def __init__(
        self,
        ca_file: Path,
        folder: Path,
        *,
        server_cert: Path | None = None,
        server_key: Path | None = None,
        server_ca_file: Path | None = None,
        crl_files: Sequence[Path] = (),
        host: str = "127.0.0.1",
        tls_max_version: str = "1.2",
        executable: str = "freeradius",
        raddb_template: Path = DEBIAN_RADDB,
        startup_timeout: float = 20.0,
        debug: bool = True,
        threads: int = 5,
        crl_reload_seconds: int = 0,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        if crl_reload_seconds and crl_reload_seconds < MIN_CRL_RELOAD_SECONDS:
            # FreeRADIUS would raise it to 300 without a word: say so here instead.
            raise ValueError(
                f"crl_reload_seconds must be 0 (restart for a new CRL) or at least "
                f"{MIN_CRL_RELOAD_SECONDS} (FreeRADIUS's floor)"
            )
        self.crl_reload_seconds = crl_reload_seconds
        self.ca_file = Path(ca_file).resolve()
        self.folder = Path(folder).resolve()
        self.host = host
        self.tls_max_version = tls_max_version
        self.executable = executable
        self.raddb_template = raddb_template
        self.startup_timeout = startup_timeout
        self.debug = debug
        self.threads = threads
        self.secret = secrets.token_urlsafe(18)
        self.port = 0
        self.crl_files: tuple[Path, ...] = tuple(Path(p).resolve() for p in crl_files)
        self._process: subprocess.Popen[bytes] | None = None
        self.raddb = self.folder / "raddb"
        self.log_file = self.folder / "radiusd.log"
        if (server_cert is None) != (server_key is None):
            raise ValueError("give both server_cert and server_key, or neither")
        self._server_cert = server_cert
        self._server_key = server_key
        self._server_ca_file = server_ca_file

    # -- public surface -------------------------------------------------------------------

    @property
    def server_ca_file(self) -> Path:
        """The CA a supplicant uses to check this server's certificate."""
        if self._server_ca_file is None:
            raise RadiusError("the RADIUS server has no certificate yet; call start() first")
        return self._server_ca_file

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> RadiusServer:
        if self.running:
            return self
        _require_executable(self.executable)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._ensure_server_certificate()
        if not self.raddb.exists():
            self._copy_template()
        # A probed port can be taken between the probe and FreeRADIUS's bind; try a few.
        last_error = ""
        for attempt in range(5):
            # A restart keeps its port, so supplicants configured for it keep working.
            if attempt > 0 or self.port == 0:
                self.port = free_udp_port(self.host)
            self._write_configuration()
            ok, last_error = self._launch()
            if ok:
                log.info(
                    "event=radius_started pid=%s addr=%s:%s crl=%s mode=%s",
                    self.pid,
                    self.host,
                    self.port,
                    "yes" if self.crl_files else "no",
                    "debug" if self.debug else f"threads-{self.threads}",
                )
                return self
            if "in use" not in last_error:
                break
        raise RadiusError(f"FreeRADIUS did not start: {last_error}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("event=radius_stopped pid=%s", process.pid)

    def restart(self) -> None:
        """Stop and start again with the current settings (a new CRL needs this)."""
        self.stop()
        self.start()

    def set_crl_files(self, crl_files: Sequence[Path]) -> None:
        """CRLs to check client certificates against; takes effect at the next (re)start."""
        self.crl_files = tuple(Path(p).resolve() for p in crl_files)

    def reload_crl_files(self, crl_files: Sequence[Path]) -> None:
        """Replace the CRLs of a running server without a restart: FreeRADIUS uses them from
        the first EAP-TLS session that starts `crl_reload_seconds` after its last re-read."""
        if not self.crl_reload_seconds or not self.crl_files:
            raise RadiusError(
                "reloading CRLs needs crl_reload_seconds and CRL checking from the start"
            )
        if not crl_files:
            raise RadiusError("check_crl stays on: give at least one CRL")
        self.crl_files = tuple(Path(p).resolve() for p in crl_files)
        self._write_trusted()

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def reason_since(self, offset: int) -> str:
        """Why the server rejected what it processed after `offset` in its log: exact when
        nothing else authenticated meanwhile (negative controls run one at a time)."""
        with self.log_file.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
        for pattern in _REJECTION_REASONS:
            match = pattern.search(text)
            if match:
                return match.group(1).strip()
        return ""

    def __enter__(self) -> RadiusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- configuration --------------------------------------------------------------------

    def _ensure_server_certificate(self) -> None:
        if self._server_cert is not None:
            if self._server_ca_file is None:
                self._server_ca_file = self.ca_file
            return
        # No certificate given: a private CA for the server side only. Supplicants must then
        # trust server_ca_file; client certificates are still checked against ca_file alone.
        server_ca = create_ca(self.folder / "server-ca", "Lab RADIUS server CA")
        self._server_cert, self._server_key = issue_server_certificate(
            server_ca, self.folder / "server"
        )
        self._server_ca_file = server_ca.cert

    def _copy_template(self) -> None:
        if not self.raddb_template.is_dir():
            raise RadiusError(
                f"{self.raddb_template} is missing; install FreeRADIUS: {INSTALL_HINT}"
            )
        try:
            # Keep Debian's relative symlinks (mods-enabled -> mods-available). The stock
            # certs/ folder is not copied: nothing of it may be trusted or used.
            shutil.copytree(
                self.raddb_template,
                self.raddb,
                symlinks=True,
                ignore=shutil.ignore_patterns("certs"),
            )
        except (PermissionError, shutil.Error) as exc:
            raise RadiusError(
                f"cannot read {self.raddb_template} ({exc}); run as root or as a member of "
                "the freerad group"
            ) from None
        (self.raddb / "certs").mkdir(mode=0o700, exist_ok=True)

    def _write_configuration(self) -> None:
        if self._server_cert is None or self._server_key is None:
            raise RadiusError("no server certificate; call start()")
        for sub in ("log", "run"):
            (self.folder / sub).mkdir(exist_ok=True)
        radiusd = self.raddb / "radiusd.conf"
        radiusd.write_text(
            _patch_radiusd(
                (self.raddb_template / "radiusd.conf").read_text(encoding="utf-8"),
                raddb=self.raddb,
                logdir=self.folder / "log",
                run_dir=self.folder / "run",
                threads=self.threads,
            ),
            encoding="utf-8",
        )
        write_file(self.raddb / "clients.conf", _clients_conf(self.host, self.secret), 0o600)

        trusted = self._write_trusted()
        reload_seconds = self.crl_reload_seconds if self.crl_files else 0
        eap = self.raddb / "mods-enabled" / "eap"
        eap.unlink(missing_ok=True)
        eap.write_text(
            _eap_module(
                server_cert=self._server_cert,
                server_key=self._server_key,
                ca_file=trusted,
                check_crl=bool(self.crl_files),
                tls_max_version=self.tls_max_version,
                reload_seconds=reload_seconds,
                empty_ca_path=self._empty_ca_path() if reload_seconds else None,
            ),
            encoding="utf-8",
        )
        sites = self.raddb / "sites-enabled"
        for entry in sites.iterdir():
            # The stock sites listen on 0.0.0.0:1812 and inner-tunnel on 127.0.0.1:18120.
            entry.unlink()
        (sites / "eap-tls").write_text(_site(self.host, self.port), encoding="utf-8")

    def _empty_ca_path(self) -> Path:
        folder = self.raddb / "certs" / "reload-only"
        folder.mkdir(parents=True, exist_ok=True)
        if any(folder.iterdir()):  # whatever lies here would be trusted
            raise RadiusError(f"{folder} must stay empty")
        return folder

    def _write_trusted(self) -> Path:
        """The trusted client CAs, plus a CRL for each when revocation is checked (FreeRADIUS,
        with OpenSSL's X509_V_FLAG_CRL_CHECK, rejects every client whose CA has no CRL).
        Replaced by a rename, so a re-read never sees half a file."""
        bundle = self.ca_file.read_bytes()
        for crl in self.crl_files:
            bundle += b"\n" + _crl_pem(crl)
        trusted = self.raddb / "certs" / "trusted-ca.pem"
        write_file(trusted, bundle)
        return trusted

    def _launch(self) -> tuple[bool, str]:
        self.log_file.write_bytes(b"")  # an old "Ready" line must not fool the wait
        with self.log_file.open("ab") as handle:
            # -X: one thread and a full trace; -f -l: foreground, the thread pool, and only
            # info/error lines (each rejection's reason is one of them) in the same file.
            mode = ["-X"] if self.debug else ["-f", "-l", str(self.log_file)]
            self._process = subprocess.Popen(
                [self.executable, *mode, "-d", str(self.raddb)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=child_preexec,  # noqa: PLW1509 - only sets the parent-death signal
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if READY in text:
                return True, ""
            if self._process.poll() is not None:
                self._process = None
                return False, _error_lines(text)
            time.sleep(0.02)
        self.stop()
        return False, f"not ready after {self.startup_timeout:.0f} s; see {self.log_file}"


def _require_executable(name: str) -> None:
    if shutil.which(name) is None:
        raise RadiusError(f"'{name}' is not installed; install it with: {INSTALL_HINT}")


def _patch_radiusd(text: str, *, raddb: Path, logdir: Path, run_dir: Path, threads: int = 5) -> str:
    def setting(name: str, value: str, source: str) -> str:
        pattern = re.compile(rf"^(\s*){name}\s*=.*$", re.MULTILINE)
        if not pattern.search(source):
            raise RadiusError(f"radiusd.conf template has no '{name}' setting")
        return pattern.sub(lambda m: f"{m.group(1)}{name} = {value}", source, count=1)

    text = setting("raddbdir", str(raddb), text)
    text = setting("logdir", str(logdir), text)
    text = setting("run_dir", str(run_dir), text)
    text = setting("reject_delay", "0", text)
    # No proxying: its listener would bind every address ("proxy address *").
    text = setting("proxy_requests", "no", text)
    # The thread pool (ignored under -X): start as many threads as authentications run at
    # once, so a burst does not wait for the pool to grow; keep Debian's ceiling otherwise.
    text = setting("start_servers", str(threads), text)
    text = setting("max_servers", str(max(threads, 32)), text)
    text = setting("max_spare_servers", str(max(threads, 10)), text)
    # Stay the calling user: `freerad` could not read a private temp folder.
    return re.sub(r"^(\s*)(user|group)\s*=.*$", r"\1# \2 (lab: run as caller)", text, flags=re.M)


def _clients_conf(host: str, secret: str) -> bytes:
    return (
        "# The lab's only RADIUS client: eapol_test on loopback.\n"
        "client lab-loopback {\n"
        f"\tipaddr = {host}\n"
        f'\tsecret = "{secret}"\n'
        "\trequire_message_authenticator = yes\n"
        "\tshortname = lab-loopback\n"
        "}\n"
    ).encode()


def _eap_module(
    *,
    server_cert: Path,
    server_key: Path,
    ca_file: Path,
    check_crl: bool,
    tls_max_version: str,
    reload_seconds: int = 0,
    empty_ca_path: Path | None = None,
) -> str:
    # FreeRADIUS rebuilds its whole X509 store, ca_file included, at this interval, but only
    # with a ca_path; an empty one adds no trust.
    reload = (
        f"\n\t\tca_path = {empty_ca_path}\n\t\tca_path_reload_interval = {reload_seconds}"
        if empty_ca_path is not None
        else ""
    )
    return f"""# EAP-TLS only, written by simulator.radius.
eap {{
	default_eap_type = tls
	timer_expire = 60
	ignore_unknown_eap_types = no
	cisco_accounting_username_bug = no
	max_sessions = ${{max_requests}}
	tls-config tls-common {{
		private_key_file = {server_key}
		certificate_file = {server_cert}
		# The EST CA only. No ca_path with certificates in it (raddb/certs would trust them
		# all) and never the system bundle: a certificate from any public CA must not join.
		ca_file = {ca_file}
		check_crl = {"yes" if check_crl else "no"}{reload}
		# A pump may only authenticate as the CN its certificate was issued to.
		check_cert_cn = %{{User-Name}}
		cipher_list = "DEFAULT"
		cipher_server_preference = no
		tls_min_version = "1.2"
		tls_max_version = "{tls_max_version}"
		ecdh_curve = ""
		cache {{
			enable = no
		}}
		ocsp {{
			enable = no
		}}
	}}
	tls {{
		tls = tls-common
	}}
}}
"""


def _site(host: str, port: int) -> str:
    return f"""# The access point's authentication server: EAP-TLS on {host}:{port}, written by
# simulator.radius.
server default {{
	listen {{
		type = auth
		ipaddr = {host}
		port = {port}
	}}
	authorize {{
		eap {{
			ok = return
		}}
	}}
	authenticate {{
		eap
	}}
	post-auth {{
		Post-Auth-Type REJECT {{
			eap
		}}
	}}
}}
"""


def _crl_pem(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN X509 CRL-----" in data:
        return data
    return x509.load_der_x509_crl(data).public_bytes(serialization.Encoding.PEM)


def _error_lines(text: str) -> str:
    lines = [line for line in text.splitlines() if "rror" in line or "fail" in line.lower()]
    return " | ".join(lines[-5:]) or text[-1500:]
