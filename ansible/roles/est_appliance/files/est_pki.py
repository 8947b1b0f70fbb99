"""Complete the appliance's PKI around an existing CA; run by the est_appliance role.

`est-appliance init` creates a CA together with the server and RA certificates, and refuses to
touch an existing CA. Two cases need more, and neither may replace the CA:

* an imported CA (the hospital's own): the server and RA certificates do not exist yet;
* the server certificate no longer matches config.yaml (its names changed) or is about to
  expire: it is re-issued from the same CA, and the service restarts with it.

The RA certificate is issued only when missing: re-issuing it would invalidate what the IQE
team installed. Prints one JSON line, {"changed": bool, "issued": [...]}, for the role.

Usage: est_pki.py CONFIG_YAML RENEW_DAYS
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import sys
from pathlib import Path

from cryptography import x509

from appliance.clock import utc_now
from appliance.config import PkiConfig, load_config
from appliance.issuer import CaMaterial, build_ra_cert, build_server_cert, public_keys_match
from appliance.keys import generate_key
from appliance.pem_files import (
    load_certificate,
    load_private_key,
    write_certificates,
    write_private_key,
)


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return dns | ips


def _wanted_names(pki: PkiConfig) -> set[str]:
    return {
        str(ipaddress.ip_address(v)) if not isinstance(v, str) else v
        for v in pki.server_san_values()
    }


def _server_is_current(pki: PkiConfig, ca: CaMaterial, now: dt.datetime, renew_days: int) -> bool:
    if not (pki.server_cert.exists() and pki.server_key.exists()):
        return False
    cert = load_certificate(pki.server_cert)
    common_names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return (
        cert.issuer == ca.cert.subject
        and public_keys_match(cert.public_key(), load_private_key(pki.server_key))
        and _names(cert) == _wanted_names(pki)
        and [a.value for a in common_names] == [pki.server_common_name]
        and cert.not_valid_after_utc > now + dt.timedelta(days=renew_days)
    )


def complete(config_path: Path, renew_days: int) -> list[str]:
    pki = load_config(config_path).pki
    now = utc_now()
    ca = CaMaterial.load(pki, now)  # refuses a mismatched key, an expired CA, a non-CA cert
    issued: list[str] = []
    if not _server_is_current(pki, ca, now, renew_days):
        key = generate_key(pki.key_algorithm)
        cert = build_server_cert(ca, key, pki, now)
        # Key first: a half-written pair never looks complete to the check above.
        write_private_key(pki.server_key, key)
        write_certificates(pki.server_cert, [cert])
        issued.append(str(pki.server_cert))
    if not (pki.ra_cert.exists() and pki.ra_key.exists()):
        key = generate_key(pki.key_algorithm)
        cert = build_ra_cert(ca, key, pki, now)
        write_private_key(pki.ra_key, key)
        write_certificates(pki.ra_cert, [cert])
        issued.append(str(pki.ra_cert))
    return issued


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__ or "")
        return 2
    issued = complete(Path(argv[1]), int(argv[2]))
    sys.stdout.write(json.dumps({"changed": bool(issued), "issued": issued}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
