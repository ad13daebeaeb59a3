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
    prometheus                                               # promtool: alert rules and /metrics lint in tests
    tmux                                                     # a real terminal for the CLI's TTY tests
    openssh-server openssh-client                            # sshd on loopback for the upgrade tests
    qemu-user-static                                         # runs the arm64 agent in the tests
    systemd                                                  # systemd-analyze verify (not as PID 1)
    nix-bin                                                  # nix-instantiate: parses/evaluates nix/ in the tests
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
# Only promtool is needed from the prometheus package: keep its server off.
if [[ -d /run/systemd/system ]] && systemctl is-enabled prometheus >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v cargo >/dev/null || { echo "$PROG: cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
# arm64 builds (dev/release, the qemu test): the musl target, zig (PyPI
# `ziglang`) as the cross C compiler, and cargo-zigbuild (crates.io).
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-musl; then
    log "rustup target add aarch64-unknown-linux-musl"
    rustup target add aarch64-unknown-linux-musl >&2
fi
if ! command -v zig >/dev/null && ! python3 -m ziglang version >/dev/null 2>&1; then
    log "installing zig (pip install ziglang)"
    python3 -m pip install --quiet ziglang >&2 \
        || python3 -m pip install --quiet --break-system-packages ziglang >&2
fi
if ! command -v cargo-zigbuild >/dev/null; then
    log "installing cargo-zigbuild (cargo install)"
    env -u CARGO_TARGET_DIR cargo install --locked --quiet cargo-zigbuild >&2
fi
log "ok"
