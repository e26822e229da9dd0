#!/bin/sh
# Shared first step of every image: trust extra CAs, make sure python3 + venv exist.
# Runs on python:3.11-slim (python in /usr/local) and on a bare Debian base alike.
set -eu
apt_packages="ca-certificates $*"
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_packages="$apt_packages python3 python3-venv"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends $apt_packages
rm -rf /var/lib/apt/lists/*
if ls /tmp/extra-ca/*.crt >/dev/null 2>&1; then
    mkdir -p /usr/local/share/ca-certificates/extra
    for crt in /tmp/extra-ca/*.crt; do
        cp "$crt" "/usr/local/share/ca-certificates/extra/$(basename "$crt")"
    done
    update-ca-certificates
    # update-ca-certificates only keeps the first certificate of a multi-certificate file;
    # append whole bundles so every certificate in them is trusted.
    cat /tmp/extra-ca/*.crt >> /etc/ssl/certs/ca-certificates.crt
fi
rm -rf /tmp/extra-ca
python3 -m venv /opt/venv
export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
/opt/venv/bin/pip install --no-cache-dir --upgrade pip
