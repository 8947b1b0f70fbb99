#!/usr/bin/env bash
# The main job: a local lab on loopback. Sets up this checkout (Debian packages including
# FreeRADIUS and eapol_test, .venv), then `iqe-sim lab`: creates a lab PKI in a scratch folder,
# starts the appliance and FreeRADIUS on 127.0.0.1, enrolls pumps by both IQE gateway
# approaches, proves each certificate in a real EAP-TLS authentication, runs the negative
# controls, prints the report and stops everything it started.
# Arguments go to `iqe-sim lab` (e.g. --pumps 50 --report lab-output/report.json).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/iqe-sim lab "$@"
