"""Models of the IQE gateway and the infusion pumps it enrolls, and the access point's RADIUS
server that proves each certificate in a real EAP-TLS authentication.

Public API (everything else is internal)::

    from pathlib import Path
    from simulator import Gateway, Pump, RadiusServer, authenticate

    gateway = Gateway(
        "https://127.0.0.1:8445",
        ca_file=Path("certs/ca-cert.pem"),      # or pin="AB:CD:..." (SHA-256 of the CA)
        approach="ra",                          # or "password" with username=, password=
        ra_cert=Path("certs/iqe-ra-cert.pem"),
        ra_key=Path("certs/iqe-ra-key.pem"),
        response_format="der",                  # "base64", "pem" or "auto"
    )
    with gateway:
        pump = Pump.create("NPPBBB5", Path("pumps/NPPBBB5"))   # RSA-2048; KeyType.EC_P256
        gateway.enroll_pump(pump, gateway.fetch_cacerts())      # key.pem 0600, cert.pem, ca.pem

    with RadiusServer(Path("certs/ca-cert.pem"), Path("radius")) as radius:
        result = authenticate(pump, radius)     # EapResult(accepted=True, exit_code=0, ...)
        other = authenticate(pump, radius, identity="NPPOTHER", explain=True)
        assert not other.accepted               # check_cert_cn ties identity to the CN

Failures raise `EnrollmentError` with `.branch` (a `Branch` of the troubleshooting tree),
`.message`, `.fix`, `.status` and the appliance's own `.server_message`.

`RadiusServer(ca_file, folder, server_cert=..., server_key=..., crl_files=[...])` trusts only
`ca_file`; without a server certificate it issues itself one from a private CA, which
supplicants then trust through `radius.server_ca_file`. `set_crl_files()` + `restart()` turn on
CRL checking (the port stays the same).

`simulator.lab.run_lab`, `simulator.fleet.run_fleet` and `simulator.diagnose.diagnose` are the
library behind `iqe-sim lab`, `iqe-sim fleet` and `iqe-sim diagnose`.
"""

from simulator.eapol import EapResult, Supplicant, authenticate
from simulator.gateway import Approach, Enrollment, Gateway
from simulator.pki import KeyType
from simulator.pump import ChainError, Pump
from simulator.radius import RadiusError, RadiusServer
from simulator.troubleshooting import TREE, Branch, EnrollmentError

__all__ = [
    "TREE",
    "Approach",
    "Branch",
    "ChainError",
    "EapResult",
    "Enrollment",
    "EnrollmentError",
    "Gateway",
    "KeyType",
    "Pump",
    "RadiusError",
    "RadiusServer",
    "Supplicant",
    "authenticate",
]
