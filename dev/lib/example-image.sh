#!/usr/bin/env bash
# example-image.sh <user>        (run as root)
#
# Builds the quick start's example image localhost/mcp-examples/hello:v1 in
# <user>'s rootless podman store, from the host's static busybox (no image
# registry needed). Idempotent: skipped when the image exists.
set -euo pipefail
PROG=example-image.sh
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
[[ $# -eq 1 ]] || { echo "usage: $PROG <user>" >&2; exit 2; }
USER_NAME=$1
USER_UID=$(id -u "$USER_NAME")
USER_HOME=$(getent passwd "$USER_NAME" | cut -d: -f6)
IMAGE=localhost/mcp-examples/hello:v1
as_user() {
    (cd / && runuser -u "$USER_NAME" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="$USER_HOME" XDG_RUNTIME_DIR="/run/user/$USER_UID" "$@")
}
if as_user podman image exists "$IMAGE"; then
    echo "$PROG: present: $IMAGE" >&2
    exit 0
fi
BUSYBOX=/bin/busybox
file -L "$BUSYBOX" | grep -q "statically linked" || die "$BUSYBOX is not static (apt-get install busybox-static)"
work=$(mktemp -d /tmp/mcp-example.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,www,proc,sys,dev,run}
chmod 1777 "$root/tmp"; chmod 0777 "$root/www"
cp "$BUSYBOX" "$root/bin/busybox"
for a in $("$BUSYBOX" --list); do [[ $a == busybox ]] || ln -sf busybox "$root/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
cat >"$root/bin/hello" <<'SH'
#!/bin/sh
# Serves a greeting on $PORT (set by mcp from the route's host port).
: "${PORT:=8080}"
printf '%s (container %s, port %s)\n' "${GREETING:-hello}" "$(hostname)" "$PORT" >/www/index.html
trap 'kill $pid 2>/dev/null; exit 0' TERM INT
httpd -f -p "0.0.0.0:$PORT" -h /www & pid=$!
echo "hello: serving on 0.0.0.0:$PORT" >&2
wait
SH
chmod 0755 "$root/bin/hello"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/rootfs.tar" .
chmod -R a+rX "$work"
as_user podman import -q --change 'CMD ["/bin/hello"]' --change 'ENV PATH=/bin' \
    --change 'STOPSIGNAL SIGTERM' "$work/rootfs.tar" "$IMAGE" >/dev/null
echo "$PROG: built $IMAGE" >&2
