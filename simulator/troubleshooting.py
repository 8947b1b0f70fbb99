"""The integration guide's troubleshooting tree: every way an enrollment can fail belongs to
one branch, and each branch has the one-sentence fix an operator can act on.

Branches are listed in the order `iqe-sim diagnose` walks them: reach the server, trust its
TLS certificate, be accepted by it, send a request it accepts, read its answer, install a
certificate that chains to the CA.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Branch(enum.Enum):
    CONNECT = "connect"
    TLS_TRUST = "tls-trust"
    TLS_CLIENT_CERT = "tls-client-certificate"
    CREDENTIALS = "401-credentials"
    AUTHORIZATION = "403-authorization"
    REQUEST = "4xx-request"
    SERVER = "5xx-server"
    PKCS7 = "pkcs7-format"
    CHAIN = "certificate-chain"

    @property
    def title(self) -> str:
        return _TITLES[self]


_TITLES = {
    Branch.CONNECT: "the gateway cannot reach the appliance",
    Branch.TLS_TRUST: "the gateway does not trust the appliance's TLS certificate",
    Branch.TLS_CLIENT_CERT: "the appliance refused the gateway's TLS client certificate",
    Branch.CREDENTIALS: "401: the appliance did not accept the credentials or certificate",
    Branch.AUTHORIZATION: "403: authenticated, but not allowed to enroll",
    Branch.REQUEST: "4xx: the appliance refused the request",
    Branch.SERVER: "5xx: the appliance failed",
    Branch.PKCS7: "the answer is not a PKCS#7 the gateway can parse",
    Branch.CHAIN: "the certificate does not fit the pump or does not chain to the CA",
}


class EnrollmentError(Exception):
    """A failure, classified: the branch, what happened, and the fix in one sentence."""

    def __init__(
        self,
        branch: Branch,
        message: str,
        fix: str,
        *,
        status: int | None = None,
        server_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.branch = branch
        self.message = message
        self.fix = fix
        self.status = status
        self.server_message = server_message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"[{self.branch.value}] {self.message} Fix: {self.fix}"

    def as_dict(self) -> dict[str, object]:
        return {
            "branch": self.branch.value,
            "title": self.branch.title,
            "message": self.message,
            "fix": self.fix,
            "status": self.status,
            "server_message": self.server_message,
            "request_id": self.request_id,
        }


@dataclass(frozen=True)
class TreeNode:
    branch: Branch
    check: str
    fix: str


# The tree as the README prints it (`iqe-sim diagnose --tree` too).
TREE: tuple[TreeNode, ...] = (
    TreeNode(
        Branch.CONNECT,
        "TCP connection to host:port",
        "start the appliance (`est-appliance serve`) or correct the URL's host and port; "
        "check firewalls between gateway and appliance.",
    ),
    TreeNode(
        Branch.TLS_TRUST,
        "TLS handshake verifies the server certificate with the gateway's CA file",
        "give the gateway the appliance's own certs/ca-cert.pem (or pin the /cacerts "
        "fingerprint that `est-appliance init` printed) and use a host name from "
        "pki.server_sans in the URL.",
    ),
    TreeNode(
        Branch.TLS_CLIENT_CERT,
        "the appliance accepts the gateway's client certificate in the handshake",
        "install iqe-ra-cert.pem and iqe-ra-key.pem written by this appliance's "
        "`est-appliance init`: a certificate from another CA fails the handshake.",
    ),
    TreeNode(
        Branch.CREDENTIALS,
        "HTTP 401 on bootstrap/simpleenroll",
        "password approach: set the user name and password the appliance knows "
        "(`est-appliance passwd USER`); RA approach: send the RA certificate and key.",
    ),
    TreeNode(
        Branch.AUTHORIZATION,
        "HTTP 403",
        "use the RA certificate (EKU id-kp-cmcRA) for simpleenroll, not a pump's "
        "certificate, or add its fingerprint to auth.ra_fingerprints.",
    ),
    TreeNode(
        Branch.REQUEST,
        "HTTP 400/404/405/413/415 with the server's sentence",
        "do what the appliance's message says (typically: regenerate the CSR with an "
        "RSA-2048 or P-256 key and Content-Type application/pkcs10).",
    ),
    TreeNode(
        Branch.SERVER,
        "HTTP 5xx",
        "give the appliance operator the request id; the detail is in the appliance's log.",
    ),
    TreeNode(
        Branch.PKCS7,
        "the 200 answer parses as certs-only PKCS#7 in the expected encoding",
        "make both sides agree: gateway.response_format in the appliance's config.yaml "
        "(der for the IQE gateway) and the gateway's expected format (der, base64 or auto).",
    ),
    TreeNode(
        Branch.CHAIN,
        "the issued certificate carries the pump's key and serial and chains to the CA",
        "fetch /cacerts again and install that CA chain; enroll with the pump's own CSR.",
    ),
)

FIXES = {node.branch: node.fix for node in TREE}
