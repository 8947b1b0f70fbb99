"""Run the integration guide's two curl recipes against a freshly started appliance."""

from __future__ import annotations

import base64
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402
    LAB_PASSWORD,
    LAB_USER,
    curl,
    make_csr,
    make_lab,
    pkcs7_certificates,
    running_appliance,
    verify_with_ca,
)


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="est-lab-"))
    failures = 0
    try:
        lab = make_lab(scratch / "appliance")
        print(f"lab PKI in {lab.certs}")
        with running_appliance(lab) as appliance:
            print(f"appliance listening on {appliance.base}/.well-known/est/")
            for approach, cn in (("password", "test-pump-001"), ("ra", "test-pump-002")):
                csr, _key = make_csr(scratch, cn)
                if approach == "password":
                    b64 = scratch / f"{cn}.b64"
                    b64.write_bytes(base64.encodebytes(csr.read_bytes()))
                    args = [
                        "-u",
                        f"{LAB_USER}:{LAB_PASSWORD}",
                        "-H",
                        "Content-Transfer-Encoding: base64",
                        "--data",
                        f"@{b64}",
                    ]
                    url = appliance.url("bootstrap")
                else:
                    args = [
                        "--cert",
                        str(lab.ra_cert),
                        "--key",
                        str(lab.ra_key),
                        "--data-binary",
                        f"@{csr}",
                    ]
                    url = appliance.url("simpleenroll")
                status, _h, body = curl(
                    [
                        "--cacert",
                        str(lab.ca_cert),
                        "-H",
                        "Content-Type: application/pkcs10",
                        *args,
                        url,
                    ]
                )
                ok = status == 200
                verdict = "FAILED"
                if ok:
                    certs = pkcs7_certificates(body)
                    ok = verify_with_ca(certs, lab.ca_cert, scratch).returncode == 0
                    verdict = "certificate verified by openssl" if ok else "verify FAILED"
                failures += 0 if ok else 1
                print(f"{approach:8} {cn}: HTTP {status}, {verdict}")
        print("result: all pumps enrolled" if failures == 0 else f"result: {failures} failed")
        return 0 if failures == 0 else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
