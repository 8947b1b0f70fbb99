"""A CSR whose signature verifies but whose subject cannot be read: a 400 that says so.

codec.decode_csr leaves the subject to csr_policy.vet, which every enrollment runs first;
this pins that the refusal still happens, as a 400 and not a 500, on every enrollment path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.csrattrs import tlv
from tests.support import Lab, RunningAppliance, curl_ra_enroll, make_csr

_ECDSA_WITH_SHA256 = bytes.fromhex("06082a8648ce3d040302")


def _csr_with_unreadable_subject() -> bytes:
    """A CN whose UTF8String holds bytes that are not UTF-8, signed again after the edit."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PUMP-ODD")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    info = csr.tbs_certrequest_bytes.replace(b"PUMP-ODD", b"PU\xff\xfe-ODD")
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    der = tlv(0x30, info + tlv(0x30, _ECDSA_WITH_SHA256) + tlv(0x03, b"\x00" + signature))
    odd = x509.load_der_x509_csr(der)
    assert odd.is_signature_valid
    with pytest.raises(ValueError, match="error parsing asn1 value"):
        _ = odd.subject
    return der


@pytest.mark.parametrize("operation", ["simpleenroll", "simplereenroll", "serverkeygen"])
def test_unreadable_subject_is_a_400(
    appliance: RunningAppliance, lab: Lab, work: Path, operation: str
) -> None:
    odd = work / "odd-subject.der"
    odd.write_bytes(_csr_with_unreadable_subject())
    status, _headers, body = curl_ra_enroll(lab, appliance.url(operation), odd)
    assert status == 400, body
    assert b"CSR is not a valid PKCS#10 structure" in body
    appliance.assert_alive()
    csr_der, _key = make_csr(work, "after-odd-subject")
    status, _headers, body = curl_ra_enroll(lab, appliance.url("simpleenroll"), csr_der)
    assert status == 200, body
