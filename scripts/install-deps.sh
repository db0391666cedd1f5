#!/usr/bin/env bash
# Installs every build, test and runtime dependency of limits from Debian 12 packages.
# Idempotent: packages already present are not touched and apt is not even called.
# Works as root or as a user with sudo; never prompts (CI has no terminal).
set -euo pipefail

PACKAGES=(
    build-essential cmake pkg-config git ca-certificates curl
    libuv1-dev node-llhttp libcjson-dev libhiredis-dev libpq-dev
    libcurl4-openssl-dev libexpat1-dev libcmark-dev libssl-dev zlib1g-dev
    libcriterion-dev python3-yaml
    postgresql redis-server
    clang clang-format libclang-rt-14-dev
    nginx-light wrk
    prometheus
    iproute2 procps psmisc
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    echo "install-deps: missing packages (${missing[*]}) and not root, no sudo" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# policy-rc.d keeps Debian's maintainer scripts from starting system-wide postgresql,
# redis and nginx services on their default ports: the project starts its own.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    created_policy=1
fi
trap '[ $created_policy -eq 1 ] && "${SUDO[@]}" rm -f "$policy"' EXIT
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
echo "install-deps: done"
