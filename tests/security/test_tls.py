"""TLS surface of the appliance, probed with the openssl command line (issue 7: TLS)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import Lab, RunningAppliance, openssl

# TLS 1.2 suites a client may negotiate: forward secrecy and AEAD only.
EXPECTED_TLS12_SUITES = {
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
}


def _s_client(appliance: RunningAppliance, *args: str, stdin: bytes = b"") -> str:
    host_port = appliance.base.removeprefix("https://")
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            host_port,
            "-CAfile",
            str(appliance.lab.ca_cert),
            *args,
        ],
        input=stdin,
        capture_output=True,
        timeout=20,
        check=False,
    )
    return (result.stdout + result.stderr).decode(errors="replace")


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_before_1_2_fails_the_handshake(appliance: RunningAppliance, version: str) -> None:
    output = _s_client(appliance, version)
    assert "Cipher is (NONE)" in output
    assert "alert protocol version" in output or "no protocols available" in output


@pytest.mark.parametrize(("version", "protocol"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls_1_2_and_1_3_are_accepted(
    appliance: RunningAppliance, version: str, protocol: str
) -> None:
    output = _s_client(appliance, version)
    assert f"New, {protocol}, Cipher is" in output
    assert "Verify return code: 0 (ok)" in output


def test_only_strong_tls12_suites_are_accepted(appliance: RunningAppliance) -> None:
    """Offer every TLS 1.2 suite this openssl knows, one at a time; list what is accepted."""
    suites = openssl("ciphers", "-s", "-tls1_2", "ALL:COMPLEMENTOFALL:@SECLEVEL=0").stdout
    offered = [s for s in suites.decode().strip().split(":") if s]
    assert len(offered) > 20, "openssl should know many TLS 1.2 suites"
    accepted = set()
    for suite in offered:
        output = _s_client(appliance, "-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0")
        if f"Cipher is {suite}" in output:
            accepted.add(suite)
    print("accepted TLS 1.2 suites:", sorted(accepted))
    assert accepted == EXPECTED_TLS12_SUITES


def test_client_initiated_renegotiation_is_refused(appliance: RunningAppliance) -> None:
    output = _s_client(appliance, "-tls1_2", stdin=b"R\n")
    assert "RENEGOTIATING" in output
    assert "no renegotiation" in output


def test_untrusted_server_chain_is_detected_by_clients(
    appliance: RunningAppliance, tmp_path_factory: pytest.TempPathFactory, lab: Lab
) -> None:
    """Negative control for the trust tests: a client that trusts another CA rejects us."""
    from tests.support import make_lab

    other = make_lab(tmp_path_factory.mktemp("other-ca"))
    host_port = appliance.base.removeprefix("https://")
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            host_port,
            "-CAfile",
            str(other.ca_cert),
            "-verify_return_error",
        ],
        input=b"",
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode != 0
    assert "verify error" in (result.stdout + result.stderr).decode()
