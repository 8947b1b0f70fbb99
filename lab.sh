#!/usr/bin/env bash
# The main job: a local lab on loopback. Sets up this checkout (Debian tools, .venv), creates a
# lab PKI in a scratch folder, starts the appliance, enrolls a pump by each of the IQE
# gateway's two approaches with the integration guide's curl recipes, verifies the answers
# with openssl, prints what happened and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python scripts/recipe_lab.py "$@"
