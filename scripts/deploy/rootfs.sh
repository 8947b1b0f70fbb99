#!/usr/bin/env bash
# A throwaway Debian bookworm root with real systemd, for the deployment test (tests/deploy/).
#
#   scripts/deploy/rootfs.sh            prints the folder of the unpacked root, building it if needed
#
# debootstrap takes about a minute, so the result is cached as a tarball under .cache/deploy/
# (git-ignored), keyed by the suite, the package list and this script's steps: changing either
# builds a new one. The unpacked folder next to it is only ever booted with
# `systemd-nspawn --volatile=overlay`, which keeps every change of a run in memory, so one
# unpacked copy serves every run and each run starts clean. Needs root (debootstrap, nspawn).
set -euo pipefail
cd "$(dirname "$0")/../.."

SUITE=bookworm
# What the role needs on a bare host: python3 for Ansible, python3-venv for the appliance's
# virtualenv, sshd to be reached at all, sudo for `become`, systemd as PID 1, and freeradius for
# the radius role (its stock service is disabled below so that it never binds 1812 on the host)
# and eapoltest for the pump checks of the iqe_simulator role.
PACKAGES=python3,python3-venv,ca-certificates,openssh-server,sudo,systemd,systemd-sysv,dbus,iproute2,curl,openssl,freeradius,eapoltest
STEPS_VERSION=2  # bump when the customisation below changes

# The same Debian mirror apt uses on this machine (first deb URI of the first source).
mirror=""
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
fi
mirror=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}

key=$(printf '%s\n' "$SUITE" "$PACKAGES" "$STEPS_VERSION" | sha256sum | cut -c1-12)
cache=.cache/deploy
tarball=$cache/$SUITE-$key.tar.gz
root=$cache/root-$SUITE-$key

if [ ! -f "$tarball" ]; then
    mkdir -p "$cache"
    build=$(mktemp -d "$cache/build.XXXXXX")
    trap 'rm -rf "$build"' EXIT
    echo "rootfs: debootstrap $SUITE from $mirror (about a minute, cached afterwards)" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$build/root" "$mirror" \
        >"$build/debootstrap.log" 2>&1 || { tail -30 "$build/debootstrap.log" >&2; exit 1; }
    r=$build/root
    # The container shares the host's network: nothing may listen on a fixed host port on its
    # own. sshd is started per run with a drop-in naming 127.0.0.1 and a free port; the stock
    # FreeRADIUS service stays off until the radius role configures it.
    chroot "$r" systemctl disable freeradius.service >/dev/null 2>&1 || true
    chroot "$r" systemctl disable ssh.service >/dev/null 2>&1 || true
    rm -f "$r"/etc/ssh/ssh_host_*
    chroot "$r" ssh-keygen -A >/dev/null
    # A deploy account like a cloud image's: key-only ssh, passwordless sudo.
    chroot "$r" useradd --create-home --shell /bin/bash deploy
    echo 'deploy ALL=(ALL) NOPASSWD:ALL' >"$r/etc/sudoers.d/deploy"
    chmod 0440 "$r/etc/sudoers.d/deploy"
    install -d -m 0700 -o 1000 -g 1000 "$r/home/deploy/.ssh"
    # Where a run's public key is bind-mounted (see tests/deploy/container.py).
    printf 'AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%%u\n' \
        >"$r/etc/ssh/sshd_config.d/10-authorized-keys.conf"
    install -d -m 0755 "$r/etc/ssh/authorized_keys.d"
    echo est-deploy-test >"$r/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 est-deploy-test\n::1 localhost ip6-localhost\n' \
        >"$r/etc/hosts"
    # Package lists stay: the role's apt task then needs no network when nothing is missing.
    rm -rf "$r"/var/cache/apt/archives/*.deb
    tar --numeric-owner --xattrs -C "$r" -czf "$build/root.tar.gz" .
    mv "$build/root.tar.gz" "$tarball"
    rm -rf "$build"
    trap - EXIT
fi

# Roots and tarballs of other package lists or steps are stale: about 400 MB each.
for stale in "$cache"/root-* "$cache"/*.tar.gz; do
    [ -e "$stale" ] || continue
    case $stale in "$root" | "$tarball") ;; *) rm -rf "$stale" ;; esac
done

if [ ! -f "$root/.unpacked" ]; then
    rm -rf "$root"
    mkdir -p "$root"
    tar --numeric-owner --xattrs -C "$root" -xzf "$tarball"
    touch "$root/.unpacked"
fi
realpath "$root"
