#!/usr/bin/env bash
# Prepare this checkout on a fresh machine: Debian tools the lab and tests use, and a virtualenv
# with the project installed. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: openssl/curl are the real clients in tests; FreeRADIUS and eapol_test prove
# every certificate in a real EAP-TLS authentication.
APT_PACKAGES=(openssl curl ca-certificates freeradius eapoltest)
# FreeRADIUS re-reads a changed CRL at most every 300 s; the test of that runs it under
# libfaketime at 100x speed instead of waiting five minutes.
APT_PACKAGES+=(faketime)
# The operator dashboard's browser test drives Debian's chromium through chromium-driver.
APT_PACKAGES+=(chromium chromium-driver)
# High availability: the shared PostgreSQL ledger and HAProxy in front of two nodes (tests/ha).
APT_PACKAGES+=(postgresql haproxy)
# The deployment test (tests/deploy): a debootstrapped Debian booted by systemd-nspawn, reached
# by Ansible over ssh; `vagrant validate` checks the Vagrantfile of the full lab.
APT_PACKAGES+=(debootstrap systemd-container openssh-client vagrant)
APT_PACKAGES+=(${EXTRA_APT_PACKAGES:-})
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: missing Debian packages; run:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "setup: installing the project and its test tools into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
