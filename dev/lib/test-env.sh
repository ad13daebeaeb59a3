#!/usr/bin/env bash
# test-env.sh [user] [uid] [registry-port]        (run as root)
#
# Everything the end-to-end tests need, idempotently: the rootless podman
# test user, the local OCI registry on loopback, and the test images in it.
# The registry starts before any podman service of the user, because a
# running `podman system service` caches registries.conf.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
user=${1:-mcptest}
uid=${2:-8501}
port=${3:-5055}
(
    flock 9
    "$here/podman-user.sh" "$user" "$uid"
    # 9>&-: the registry daemon must not inherit (and so hold) the lock.
    "$here/test-registry.sh" start "$port" 9>&-
    "$here/test-images.sh" "$user" "127.0.0.1:$port"
) 9>/run/.mcp-test-env.lock
