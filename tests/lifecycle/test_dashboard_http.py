"""The dashboard's protections, over real HTTP with curl: login needed (303 to the form), the
session cookie's attributes, CSRF token and origin checks on the revoke POST, the RA
certificate refused, and a strict Content-Security-Policy."""

from __future__ import annotations

import re
from pathlib import Path

from tests.lifecycle.conftest import ADMIN_PASSWORD, ADMIN_USER, enroll
from tests.support import LAB_PASSWORD, LAB_USER, RunningAppliance, curl


def login(
    appliance: RunningAppliance, jar: Path, user: str, password: str
) -> tuple[int, dict[str, str]]:
    status, headers, _body = curl(
        ["--cacert", str(appliance.lab.ca_cert), "-c", str(jar),
         "--data-urlencode", f"username={user}", "--data-urlencode", f"password={password}",
         f"{appliance.base}/dashboard/login"]
    )  # fmt: skip
    return status, headers


def test_dashboard_login_cookie_csrf_and_origin(appliance: RunningAppliance, work: Path) -> None:
    lab = appliance.lab
    ca = ["--cacert", str(lab.ca_cert)]
    _c, _k, serial = enroll(appliance, "NPPDASHHTTP", work)
    status, headers, _b = curl([*ca, f"{appliance.base}/dashboard/"])
    assert status == 303 and headers["location"].endswith("/dashboard/login")
    # The RA certificate is never an operator.
    status, _h, body = curl([*ca, "--cert", str(lab.ra_cert), "--key", str(lab.ra_key),
                             f"{appliance.base}/dashboard/"])  # fmt: skip
    assert status == 403 and b"registration authority" in body
    # A bootstrap user's password does not sign in.
    status, _h = login(appliance, work / "bad.jar", LAB_USER, LAB_PASSWORD)
    assert status == 401

    jar = work / "ops.jar"
    status, headers = login(appliance, jar, ADMIN_USER, ADMIN_PASSWORD)
    assert status == 303
    cookie = headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/dashboard"):
        assert attribute.lower() in cookie.lower(), cookie
    status, headers, page = curl(
        [*ca, "-b", str(jar), f"{appliance.base}/dashboard/?q=NPPDASHHTTP"]
    )
    assert status == 200 and b"NPPDASHHTTP" in page
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    match = re.search(rb'name="csrf" value="([^"]+)"', page)
    assert match
    csrf = match.group(1).decode()

    def revoke(token: str, *extra: str) -> int:
        status, _h, _b = curl(
            [*ca, "-b", str(jar), *extra, "--data-urlencode", f"csrf={token}",
             "--data-urlencode", "subject=CN=NPPDASHHTTP", "--data", "reason=keyCompromise",
             "--data", "confirm=yes", f"{appliance.base}/dashboard/revoke"]
        )  # fmt: skip
        return status

    assert revoke("forged") == 403
    assert revoke(csrf, "-H", "Origin: https://evil.example") == 403
    status, _h, body = curl([*ca, "-b", str(jar), f"{appliance.base}/dashboard/?q=NPPDASHHTTP"])
    assert b'data-state="valid"' in body  # nothing happened so far
    # Without confirm=yes the server asks first (no script needed).
    status, _h, body = curl(
        [*ca, "-b", str(jar), "--data-urlencode", f"csrf={csrf}",
         "--data-urlencode", "subject=CN=NPPDASHHTTP", f"{appliance.base}/dashboard/revoke"]
    )  # fmt: skip
    assert status == 200 and b'name="confirm" value="yes"' in body
    assert revoke(csrf) == 303
    status, _h, body = curl([*ca, "-b", str(jar), f"{appliance.base}/dashboard/?q=NPPDASHHTTP"])
    assert b'data-state="revoked"' in body
    device_page = f"{appliance.base}/dashboard/device?subject=CN%3DNPPDASHHTTP"
    status, _h, body = curl([*ca, "-b", str(jar), device_page])
    assert status == 200 and serial.encode() in body and b"revoked" in body
    # Signing out ends the session everywhere (it lives in the ledger).
    status, _h, _b = curl([*ca, "-b", str(jar), "--data-urlencode", f"csrf={csrf}",
                           f"{appliance.base}/dashboard/logout"])  # fmt: skip
    assert status == 303
    status, headers, _b = curl([*ca, "-b", str(jar), f"{appliance.base}/dashboard/"])
    assert status == 303 and headers["location"].endswith("/dashboard/login")
