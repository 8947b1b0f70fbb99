"""RFC 7030 §4.2.3 manual approval across a restart: pending state lives in the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.conftest import CSR_TYPE, cert_of, cli, new_csr, ra
from tests.support import Lab, curl, make_lab, running_appliance


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    # The default profile itself under manual approval, in base64 for an RFC client.
    return make_lab(
        tmp_path_factory.mktemp("approval-restart"),
        {
            "enrollment": {"manual_approval": True, "retry_after_seconds": 5},
            "gateway": {"response_format": "base64"},
        },
    )


def test_pending_request_survives_restart_rfc7030_4_2_3(lab: Lab, work: Path) -> None:
    """RFC 7030 §4.2.3: a request answered 202 before a restart is still pending after it,
    can be approved while the appliance is down, and the re-sent CSR then gets 200."""
    csr, _ = new_csr(work, "restart-pump")
    args = [*ra(lab), *CSR_TYPE, "--data-binary", f"@{csr}"]
    with running_appliance(lab) as appliance:
        status, headers, body = curl([*args, appliance.url("simpleenroll")])
        assert status == 202, body
        assert headers["retry-after"] == "5"
        request_id = int(body.split()[1])
    listing = cli(lab, "pending", "--json")
    assert f'"id": {request_id}' in listing.stdout and '"state": "pending"' in listing.stdout
    with running_appliance(lab) as appliance:
        status, _h, body = curl([*args, appliance.url("simpleenroll")])
        assert status == 202 and int(body.split()[1]) == request_id
    assert cli(lab, "approve", str(request_id)).returncode == 0
    assert cli(lab, "reject", "999").returncode == 1  # unknown id: a message, not a traceback
    with running_appliance(lab) as appliance:
        status, _h, body = curl([*args, appliance.url("simpleenroll")])
        assert status == 200, body
        assert cert_of(body, base64_body=True).subject.rfc4514_string() == "CN=restart-pump"
    everything = cli(lab, "pending", "--all")
    assert "approved" in everything.stdout and "CN=restart-pump" in everything.stdout
