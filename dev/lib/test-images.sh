#!/usr/bin/env bash
# test-images.sh <user> <registry-host:port>          (run as root)
#
# Build the busybox-based images the end-to-end tests use and push them to the
# local test registry (plain HTTP), as the rootless podman <user>:
#
#   <reg>/mcp-test/web:v1, <reg>/mcp-test/web:v2
#       CMD ["/bin/mcp-web"], no ENTRYPOINT (so an explicit cmd such as
#       ["sh","-c","..."] replaces it). mcp-web writes its environment to
#       /www/env.txt and serves /www with busybox httpd on 0.0.0.0:$PORT and on
#       every $PORT_<NAME>; /www/version.txt is "v1" / "v2"; /www/healthz is
#       "ok". SIGTERM/SIGINT exit at once (podman stop does not wait 10 s).
#   <reg>/mcp-test/sleeper:v1
#       CMD sleeps forever, exits 0 at once on SIGTERM/SIGINT.
#
# No registry is reachable here, so images are made with `podman import` of a
# rootfs tar built from the host's static busybox (/bin/busybox + applet
# symlinks) with --change CMD/ENV/WORKDIR/LABEL.
#
# Idempotent: an image is skipped when the registry already holds the tag AND
# its config carries the label mcp.test.recipe=<hash of this recipe>; change
# the recipe below (or set MCP_TEST_IMAGES_FORCE=1) and it is rebuilt.
set -euo pipefail

PROG=test-images.sh
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

[[ $# -eq 2 ]] || { echo "usage: $PROG <user> <registry-host:port>" >&2; exit 2; }
USER_NAME=$1
REG=$2
[[ $REG =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || die "registry must be host:port, got '$REG'"
[[ $(id -u) -eq 0 ]] || die "must run as root"
getent passwd "$USER_NAME" >/dev/null || die "no such user '$USER_NAME' (run podman-user.sh first)"
USER_UID=$(id -u "$USER_NAME")
USER_HOME=$(getent passwd "$USER_NAME" | cut -d: -f6)
RUNTIME_DIR=/run/user/$USER_UID
[[ -d $RUNTIME_DIR ]] || die "$RUNTIME_DIR missing (run podman-user.sh first)"

BUSYBOX=${BUSYBOX:-}
if [[ -z $BUSYBOX ]]; then
    for b in /bin/busybox /usr/bin/busybox; do [[ -x $b ]] && { BUSYBOX=$b; break; }; done
fi
[[ -n $BUSYBOX ]] || die "busybox not found (apt-get install busybox-static)"
if command -v file >/dev/null; then file -L "$BUSYBOX" | grep -q "statically linked" \
        || die "$BUSYBOX is not statically linked (apt-get install busybox-static)"; fi

REG_URL=http://$REG
curl -sf -m 5 -o /dev/null "$REG_URL/v2/" || die "registry $REG_URL/v2/ does not answer (dev/lib/test-registry.sh start)"

as_user() {
    (cd / && runuser -u "$USER_NAME" -- env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="$USER_HOME" USER="$USER_NAME" LOGNAME="$USER_NAME" \
        XDG_RUNTIME_DIR="$RUNTIME_DIR" "$@")
}

# ---------------------------------------------------------------- recipes --
# /bin/mcp-web: the web image's default command.
read -r -d '' MCP_WEB <<'EOF' || true
#!/bin/sh
# mcp-test web server: serves /www on $PORT and every $PORT_<NAME>.
env | sort >/www/env.txt 2>/dev/null || echo "mcp-web: cannot write /www/env.txt" >&2
ports=""
[ -n "${PORT:-}" ] && ports="$PORT"
for var in $(env | sed -n 's/^\(PORT_[A-Za-z0-9_]*\)=.*/\1/p'); do
    eval "p=\${$var}"
    case " $ports " in *" $p "*) ;; *) ports="$ports $p" ;; esac
done
if [ -z "$ports" ]; then
    echo "mcp-web: neither PORT nor PORT_<NAME> set; using 8080" >&2
    ports=8080
fi
pids=""
trap 'kill $pids 2>/dev/null; exit 0' TERM INT
for p in $ports; do
    httpd -f -p "0.0.0.0:$p" -h /www &
    pids="$pids $!"
    echo "mcp-web $(cat /www/version.txt): serving /www on 0.0.0.0:$p" >&2
done
# stay in the foreground; `wait` returns at once when a trapped signal arrives
wait
EOF

SLEEPER_CMD="trap 'exit 0' TERM INT; while :; do sleep 3600 & wait \$!; done"

# image spec: name tag kind   (kind: web-<version> | sleeper)
IMAGES=(
    "mcp-test/web v1 web-v1"
    "mcp-test/web v2 web-v2"
    "mcp-test/sleeper v1 sleeper"
)

recipe_hash() {  # kind -> short hash over everything that defines the image
    { echo "recipe-3 $1"; echo "$MCP_WEB"; echo "$SLEEPER_CMD"; sha256sum "$BUSYBOX"; } \
        | sha256sum | cut -c1-16
}

# ------------------------------------------------------- registry checks --
ACCEPT='application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json'
# 0 when <name>:<tag> is in the registry with label mcp.test.recipe=<hash>
registry_has() {
    local name=$1 tag=$2 hash=$3 manifest cfg
    manifest=$(curl -sf -m 10 -H "Accept: $ACCEPT" "$REG_URL/v2/$name/manifests/$tag") || return 1
    cfg=$(tr -d ' \n' <<<"$manifest" | grep -o '"config":{[^}]*}' | grep -o 'sha256:[0-9a-f]\{64\}' | head -n1)
    [[ -n $cfg ]] || return 1
    curl -sf -m 10 "$REG_URL/v2/$name/blobs/$cfg" | grep -q "\"mcp.test.recipe\":\"$hash\""
}

# ------------------------------------------------------------- building --
WORK=$(mktemp -d /tmp/mcp-test-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 0755 "$WORK"

make_rootfs() {  # dir kind
    local root=$1 kind=$2 applet
    mkdir -p "$root"/{bin,etc,tmp,www,proc,sys,dev,run,var/tmp}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0777 "$root/www"   # writable even with a non-root `user = ...`
    cp "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
    printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
    mkdir -p "$root/root"
    case $kind in
        web-*)
            printf '%s\n' "$MCP_WEB" >"$root/bin/mcp-web"
            chmod 0755 "$root/bin/mcp-web"
            printf '%s\n' "${kind#web-}" >"$root/www/version.txt"
            printf 'ok\n' >"$root/www/healthz"
            printf '<html><body>mcp-test web %s</body></html>\n' "${kind#web-}" >"$root/www/index.html"
            ;;
    esac
}

build_and_push() {  # name tag kind hash
    local name=$1 tag=$2 kind=$3 hash=$4 ref=$REG/$1:$2 root cmd
    root=$WORK/$kind/rootfs
    make_rootfs "$root" "$kind"
    tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$WORK/$kind.tar" .
    chmod 0644 "$WORK/$kind.tar"
    chmod 0755 "$WORK/$kind"
    case $kind in
        web-*)   cmd='CMD ["/bin/mcp-web"]' ;;
        sleeper) cmd="CMD [\"/bin/sh\",\"-c\",\"${SLEEPER_CMD//\"/\\\"}\"]" ;;
    esac
    log "building $ref"
    as_user podman import -q \
        --change "$cmd" \
        --change 'ENV PATH=/bin' \
        --change 'WORKDIR /' \
        --change 'STOPSIGNAL SIGTERM' \
        --change "LABEL org.opencontainers.image.title=$name" \
        --change "LABEL org.opencontainers.image.version=$tag" \
        --change "LABEL mcp.test.recipe=$hash" \
        "$WORK/$kind.tar" "$ref" >/dev/null
    log "pushing $ref"
    as_user podman push -q --tls-verify=false --format v2s2 "$ref"
    registry_has "$name" "$tag" "$hash" || die "pushed $ref but the registry does not show it"
}

for spec in "${IMAGES[@]}"; do
    read -r name tag kind <<<"$spec"
    hash=$(recipe_hash "$kind")
    if [[ ${MCP_TEST_IMAGES_FORCE:-0} != 1 ]] && registry_has "$name" "$tag" "$hash"; then
        log "present: $REG/$name:$tag"
        continue
    fi
    build_and_push "$name" "$tag" "$kind" "$hash"
done
log "ok: images in $REG: mcp-test/web:v1 mcp-test/web:v2 mcp-test/sleeper:v1"
