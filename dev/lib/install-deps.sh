#!/usr/bin/env bash
# install-deps.sh        (run as root on Debian 12)
#
# Installs, only when missing, the Debian packages mcp's quick start and test
# suite need. Downloads come from the Debian package archive only.
set -euo pipefail
PROG=install-deps.sh
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { echo "$PROG: must run as root" >&2; exit 1; }

packages=(
    podman uidmap slirp4netns runc catatonit fuse-overlayfs  # rootless podman
    docker-registry                                          # local OCI registry for tests
    busybox-static                                           # example and test images
    openssl sqlite3 curl procps iproute2 file zstd           # tools the scripts and tests use
    bind9-dnsutils                                           # dig, for the DNS tests
)
missing=()
for p in "${packages[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packaged registry starts a system service on :5000 on install; the
# tests run their own on loopback, so keep the packaged one off.
if [[ -d /run/systemd/system ]] && systemctl is-enabled docker-registry >/dev/null 2>&1; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
command -v cargo >/dev/null || { echo "$PROG: cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
log "ok"
