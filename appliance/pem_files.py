"""PEM files on disk: private keys written 0600 atomically, and loaded only when not exposed."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.errors import PkiError
from appliance.keys import SigningKey, as_signing_key

if TYPE_CHECKING:
    from appliance.config import PkiConfig

# systemd puts LoadCredential= files here (systemd.exec(5), "Credentials").
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"


class Passphrase:
    """A private key's passphrase and where it came from (for messages; never the value)."""

    def __init__(self, value: bytes, source: str) -> None:
        self.value = value
        self.source = source

    def __repr__(self) -> str:
        return f"Passphrase(source={self.source!r})"


def write_private_key(path: Path, key: SigningKey, passphrase: Passphrase | None = None) -> None:
    """PKCS#8 PEM, 0600; encrypted with the best scheme the library offers when a passphrase
    is given (PBES2 with AES-256-CBC and a PBKDF2/scrypt key derivation)."""
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase is not None:
        encryption = serialization.BestAvailableEncryption(passphrase.value)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _write_atomic(path, pem, 0o600)


def ca_key_passphrase(pki: PkiConfig) -> Passphrase | None:
    """The CA key's passphrase from `pki.ca_key_passphrase_file` or the systemd credential
    `pki.ca_key_credential`; None when neither is configured. The first line counts."""
    if pki.ca_key_passphrase_file is not None:
        path = pki.ca_key_passphrase_file
        source = f"pki.ca_key_passphrase_file {path}"
    elif pki.ca_key_credential:
        directory = os.environ.get(CREDENTIALS_DIRECTORY)
        if not directory:
            raise PkiError(
                f"pki.ca_key_credential is {pki.ca_key_credential!r} but ${CREDENTIALS_DIRECTORY}"
                " is not set; run the appliance under systemd with "
                f"LoadCredential={pki.ca_key_credential}:/path/to/passphrase"
            )
        path = Path(directory) / pki.ca_key_credential
        source = f"systemd credential {pki.ca_key_credential} ({path})"
    else:
        return None
    check_private_key_mode(path, what="passphrase")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot read the CA key passphrase: {exc.strerror}") from None
    value = text.splitlines()[0] if text.strip() else b""
    if not value:
        raise PkiError(f"{path}: the CA key passphrase file is empty")
    return Passphrase(value, source)


def write_certificates(path: Path, certs: list[x509.Certificate]) -> None:
    _write_atomic(path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file created with the final mode, so a key is never briefly open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_private_key_mode(path: Path, *, what: str = "private key") -> None:
    """Refuse a key (or passphrase) that group or others may read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        hint = " (run `est-appliance init`)" if what == "private key" else ""
        raise PkiError(f"{path}: {what} file is missing{hint}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PkiError(
            f"{path}: {what} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )


def load_private_key(path: Path, passphrase: Passphrase | None = None) -> SigningKey:
    check_private_key_mode(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot read private key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(
            data, password=passphrase.value if passphrase else None
        )
    except TypeError:
        if passphrase is None:
            raise PkiError(
                f"{path}: private key is encrypted; no passphrase was configured (set "
                "pki.ca_key_passphrase_file or pki.ca_key_credential)"
            ) from None
        # A passphrase is configured but the key on disk is plain: someone replaced it.
        raise PkiError(
            f"{path}: private key is not encrypted, but {passphrase.source} is configured; "
            "encrypt it again or remove the passphrase setting"
        ) from None
    except ValueError as exc:
        if passphrase is not None and b"ENCRYPTED" in data:
            raise PkiError(
                f"{path}: the passphrase from {passphrase.source} does not decrypt this key"
            ) from None
        raise PkiError(f"{path}: not a PEM private key ({exc})") from None
    try:
        return as_signing_key(key, str(path))
    except TypeError as exc:
        raise PkiError(str(exc)) from None


def load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path}: certificate file is missing (run `est-appliance init`)") from None
    except OSError as exc:
        raise PkiError(f"{path}: cannot read certificate: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM certificate ({exc})") from None
    return certs


def load_certificate(path: Path) -> x509.Certificate:
    return load_certificates(path)[0]
