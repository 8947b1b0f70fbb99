"""PEM files on disk: private keys written 0600 atomically, and loaded only when not exposed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.errors import PkiError
from appliance.keys import SigningKey, as_signing_key


def write_private_key(path: Path, key: SigningKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, 0o600)


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


def check_private_key_mode(path: Path) -> None:
    """Refuse a key that group or others may read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PkiError(f"{path}: private key file is missing (run `est-appliance init`)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PkiError(
            f"{path}: private key is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )


def load_private_key(path: Path) -> SigningKey:
    check_private_key_mode(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot read private key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PkiError(f"{path}: private key is encrypted; no passphrase was configured") from None
    except ValueError as exc:
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
