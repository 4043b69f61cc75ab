#!/bin/sh
# Install every Debian package kestrel needs on a build/test machine (run as root).
#
# Idempotent and quick: when dpkg already reports every package installed it
# touches nothing (no apt-get update, no network). Otherwise it refreshes the
# package lists once and installs only what is missing, without recommends,
# so CI on a clean Debian 12 machine and a developer's laptop get the same set.
set -eu

# Grouped by the part of the project that needs them.
PACKAGES="
libvirt-daemon-system libvirt-clients libvirt-dev pkg-config python3-libvirt
qemu-system-x86 qemu-utils ovmf dnsmasq-base
iproute2 util-linux procps openssh-server openssh-client
busybox-static cpio gzip xz-utils
libxml2-utils xorriso genisoimage openssl ca-certificates rsync
guestfs-tools e2fsprogs kmod
python3 python3-venv python3-apt
mmdebstrap debian-archive-keyring syslinux syslinux-common mtools dosfstools fdisk e2fsprogs
postgresql
"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: must run as root" >&2
    exit 1
fi

# One dpkg-query for the whole list; packages dpkg has never heard of print
# nothing, so "missing" is every package not reported as installed (ii).
# shellcheck disable=SC2086  # word splitting of the package list is intended
installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' $PACKAGES 2>/dev/null \
    | awk '$1 == "ii" { print $2 }' || true)
missing=""
for pkg in $PACKAGES; do
    if ! printf '%s\n' "$installed" | grep -qx "$pkg"; then
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    echo "install-system-deps: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y -q --no-install-recommends $missing
else
    echo "install-system-deps: all packages present"
fi

# Without udev, /dev/kvm stays root:root 0600; libvirt then fails to open it
# and re-probes QEMU's capabilities on every define (30-50 s instead of 0.1 s).
if [ -c /dev/kvm ] && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
    echo "install-system-deps: /dev/kvm is now root:kvm 0660"
fi
