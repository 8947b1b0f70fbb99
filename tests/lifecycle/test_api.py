"""The device API: operators only (the RA, a pump and the bootstrap user get 401/403), paging
and search, one device's history, statistics."""

from __future__ import annotations

import json
from pathlib import Path

from tests.lifecycle.conftest import ADMIN_PASSWORD, ADMIN_USER, admin_curl, enroll
from tests.support import LAB_PASSWORD, LAB_USER, RunningAppliance, curl, make_csr


def test_api_refuses_enrollment_credentials_and_accepts_an_operator(
    appliance: RunningAppliance, work: Path
) -> None:
    lab = appliance.lab
    pump_cert, pump_key, _serial = enroll(appliance, "NPPAPI0", work)
    url = appliance.base + "/api/devices"
    ca = ["--cacert", str(lab.ca_cert)]
    cases = [
        ("nothing", [], 401),
        ("RA certificate", ["--cert", str(lab.ra_cert), "--key", str(lab.ra_key)], 403),
        ("pump certificate", ["--cert", str(pump_cert), "--key", str(pump_key)], 403),
        ("bootstrap user", ["-u", f"{LAB_USER}:{LAB_PASSWORD}"], 401),
        ("wrong admin password", ["-u", f"{ADMIN_USER}:not-the-password"], 401),
        ("operator", ["-u", f"{ADMIN_USER}:{ADMIN_PASSWORD}"], 200),
    ]
    for name, extra, expected in cases:
        status, headers, body = curl([*ca, *extra, url])
        assert status == expected, (name, body)
        assert headers["content-type"] == "application/json", name
        if expected != 200:
            assert json.loads(body)["error"]["status"] == expected, name


def test_device_list_pages_and_searches(appliance: RunningAppliance, work: Path) -> None:
    serials = {}
    for i in range(1, 4):
        _c, _k, serials[i] = enroll(appliance, f"NPPPAGE{i}", work)
    status, _h, body = admin_curl(appliance, "/api/devices?q=npppage&per_page=2&page=1")
    assert status == 200
    first = json.loads(body)
    assert first["total"] == 3 and len(first["devices"]) == 2
    status, _h, body = admin_curl(appliance, "/api/devices?q=npppage&per_page=2&page=2")
    second = json.loads(body)
    names = {d["subject"] for d in first["devices"] + second["devices"]}
    assert names == {"CN=NPPPAGE1", "CN=NPPPAGE2", "CN=NPPPAGE3"}
    # By serial prefix, and by state.
    status, _h, body = admin_curl(appliance, f"/api/devices?q={serials[2][:12]}")
    assert [d["subject"] for d in json.loads(body)["devices"]] == ["CN=NPPPAGE2"]
    status, _h, body = admin_curl(appliance, "/api/devices?q=npppage&state=revoked")
    assert json.loads(body)["total"] == 0
    status, _h, body = admin_curl(appliance, "/api/devices?state=bogus")
    assert status == 400
    status, _h, body = admin_curl(appliance, "/api/devices?per_page=0")
    assert status == 400


def test_history_revoke_and_statistics(appliance: RunningAppliance, work: Path) -> None:
    _c, _k, first = enroll(appliance, "NPPHIST1", work)
    _c, _k, second = enroll(appliance, "NPPHIST1", work)
    status, _h, body = admin_curl(appliance, "/api/stats")
    before = json.loads(body)
    # A failed enrollment (bad CSR) shows up under its reason.
    status, _h, _b = curl(
        ["--cacert", str(appliance.lab.ca_cert), "--cert", str(appliance.lab.ra_cert),
         "--key", str(appliance.lab.ra_key), "-H", "Content-Type: application/pkcs10",
         "--data", "not a csr", appliance.url("simpleenroll")]
    )  # fmt: skip
    assert status == 400
    status, _h, body = admin_curl(
        appliance, "/api/devices/NPPHIST1/revoke", "-X", "POST",
        "-H", "Content-Type: application/json", "--data", '{"reason": "key-compromise"}',
    )  # fmt: skip
    assert status == 200, body
    assert sorted(json.loads(body)["revoked"]) == sorted([first, second])
    status, _h, body = admin_curl(appliance, "/api/devices/NPPHIST1")
    history = json.loads(body)
    assert history["device"]["state"] == "revoked"
    events = [(h["event"], h["serial"]) for h in history["history"]]
    assert ("issued", first) in events and ("revoked", second) in events
    assert any("keyCompromise" in h["detail"] for h in history["history"])
    # Bad reason and wrong media type are 4xx sentences.
    status, _h, body = admin_curl(
        appliance, f"/api/certificates/{first}/revoke", "-X", "POST",
        "-H", "Content-Type: application/json", "--data", '{"reason": "lost it"}',
    )  # fmt: skip
    assert status == 400 and b"RFC 5280" in body
    status, _h, _b = admin_curl(
        appliance, f"/api/certificates/{first}/revoke", "-X", "POST", "--data", "x=1"
    )
    assert status == 415
    import time

    time.sleep(1.5)  # failures are stored in batches about once a second
    status, _h, body = admin_curl(appliance, "/api/stats?expiring_days=400")
    after = json.loads(body)
    assert after["revoked"] == before["revoked"] + 1
    assert after["failures_by_reason"].get("bad_request", 0) >= 1
    assert after["expiring"] >= 1  # 365-day certificates expire within 400 days
    assert sum(b["count"] for b in after["enrollments_over_time"]) >= 2
    status, _h, _b = admin_curl(appliance, "/api/nothing")
    assert status == 404
    _unused = make_csr
