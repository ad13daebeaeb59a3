#!/usr/bin/env bash
# podman-user.sh <user> <uid>
#
# Prepare a host user for rootless podman (dev / test machines; run as root).
# Idempotent: safe to run many times, fast when everything is already in place.
#
#   * user exists with exactly <uid> (never renumbers: a rootless user's UID
#     owns its whole container storage; refuse on any mismatch)
#   * home directory
#   * /etc/subuid + /etc/subgid ranges (65536 wide, not overlapping others)
#   * /run/user/<uid> (0700, owned by the user) = XDG_RUNTIME_DIR
#   * linger (loginctl enable-linger) when systemd is PID 1
#   * /dev/net/tun usable by the user (slirp4netns)
#   * / mounted shared (silences podman's "/ is not a shared mount" warning)
#   * ~/.config/containers/containers.conf with host-specific workarounds
#   * `podman info` as the user succeeds (`podman system migrate` if needed)
set -euo pipefail

PROG=podman-user.sh
log()  { printf '%s: %s\n' "$PROG" "$*" >&2; }
die()  { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

[[ $# -eq 2 ]] || { echo "usage: $PROG <user> <uid>" >&2; exit 2; }
USER_NAME=$1
USER_UID=$2
[[ $USER_NAME =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "invalid user name '$USER_NAME'"
[[ $USER_UID =~ ^[0-9]+$ ]] && (( USER_UID >= 1 && USER_UID < 65534 )) \
    || die "invalid uid '$USER_UID' (want 1..65533)"
[[ $(id -u) -eq 0 ]] || die "must run as root"

SUB_WIDTH=65536
SUB_BASE=100000
CHANGED_IDS=0   # subuid/subgid or containers.conf changed -> podman system migrate

# --------------------------------------------------------------------------
# 1. user with exactly this UID (refuse, never renumber)
# --------------------------------------------------------------------------
by_name=$(getent passwd "$USER_NAME" || true)
by_uid=$(getent passwd "$USER_UID" || true)
if [[ -n $by_name ]]; then
    have_uid=$(cut -d: -f3 <<<"$by_name")
    if [[ $have_uid != "$USER_UID" ]]; then
        die "user '$USER_NAME' already exists with UID $have_uid, not $USER_UID." \
            "Refusing to renumber it (a rootless podman user's UID owns its" \
            "container storage). Pick another user name or fix this by hand."
    fi
elif [[ -n $by_uid ]]; then
    die "UID $USER_UID already belongs to user '$(cut -d: -f1 <<<"$by_uid")'," \
        "cannot create '$USER_NAME' with it. Refusing to renumber anything."
else
    group_opt=(-U)
    if getent group "$USER_NAME" >/dev/null; then
        group_opt=(-g "$USER_NAME")   # group of that name already exists: reuse it
    elif ! getent group "$USER_UID" >/dev/null; then
        groupadd -g "$USER_UID" "$USER_NAME"
        group_opt=(-g "$USER_NAME")
    fi
    log "creating user $USER_NAME (uid $USER_UID)"
    useradd -m -u "$USER_UID" "${group_opt[@]}" -s /bin/bash -c "rootless podman ($PROG)" "$USER_NAME"
fi
USER_GID=$(id -g "$USER_NAME")
USER_HOME=$(getent passwd "$USER_NAME" | cut -d: -f6)
[[ -n $USER_HOME && $USER_HOME != / ]] || die "user '$USER_NAME' has no usable home directory"
if [[ ! -d $USER_HOME ]]; then
    log "creating home $USER_HOME"
    install -d -m 0750 -o "$USER_UID" -g "$USER_GID" "$USER_HOME"
fi

# --------------------------------------------------------------------------
# 2. /etc/subuid and /etc/subgid
# --------------------------------------------------------------------------
# Next free start above every range in both files, so the new range overlaps
# nothing (ranges are allocated in 65536 blocks from 100000, like useradd).
next_free_start() {
    local max_end=$SUB_BASE start
    local f
    for f in /etc/subuid /etc/subgid; do
        [[ -f $f ]] || continue
        while IFS=: read -r _ s c; do
            [[ $s =~ ^[0-9]+$ && $c =~ ^[0-9]+$ ]] || continue
            (( s + c > max_end )) && max_end=$(( s + c ))
        done <"$f"
    done
    start=$(( ( (max_end - SUB_BASE + SUB_WIDTH - 1) / SUB_WIDTH ) * SUB_WIDTH + SUB_BASE ))
    echo "$start"
}
has_range() {  # file -> user has an entry (by name or uid) of at least SUB_WIDTH
    local f=$1
    [[ -f $f ]] || return 1
    awk -F: -v n="$USER_NAME" -v u="$USER_UID" -v w="$SUB_WIDTH" \
        '($1==n || $1==u) && $3+0 >= w {found=1} END {exit !found}' "$f"
}
(
    flock 9
    for f in /etc/subuid /etc/subgid; do
        [[ -f $f ]] || install -m 0644 /dev/null "$f"
    done
    if ! has_range /etc/subuid || ! has_range /etc/subgid; then
        start=$(next_free_start)
        for f in /etc/subuid /etc/subgid; do
            if ! has_range "$f"; then
                log "adding $f range $USER_NAME:$start:$SUB_WIDTH"
                printf '%s:%s:%s\n' "$USER_NAME" "$start" "$SUB_WIDTH" >>"$f"
            fi
        done
        touch /run/.podman-user-ids-changed."$USER_NAME"
    fi
) 9>/run/.podman-user.lock
if [[ -e /run/.podman-user-ids-changed."$USER_NAME" ]]; then
    CHANGED_IDS=1
    rm -f /run/.podman-user-ids-changed."$USER_NAME"
fi

# --------------------------------------------------------------------------
# 3. XDG_RUNTIME_DIR and linger
# --------------------------------------------------------------------------
HAVE_SYSTEMD=0
[[ -d /run/systemd/system ]] && HAVE_SYSTEMD=1   # same test as sd_booted(3)
RUNTIME_DIR=/run/user/$USER_UID
if (( HAVE_SYSTEMD )) && command -v loginctl >/dev/null; then
    if [[ ! -e /var/lib/systemd/linger/$USER_NAME ]]; then
        log "enabling linger for $USER_NAME"
        loginctl enable-linger "$USER_NAME" || log "warning: loginctl enable-linger failed"
    fi
fi
if [[ ! -d $RUNTIME_DIR ]]; then
    log "creating $RUNTIME_DIR"
    [[ -d /run/user ]] || install -d -m 0755 -o root -g root /run/user
fi
if [[ $(stat -c '%u:%a' "$RUNTIME_DIR" 2>/dev/null) != "$USER_UID:700" ]]; then
    install -d -m 0700 -o "$USER_UID" -g "$USER_GID" "$RUNTIME_DIR"
fi

# --------------------------------------------------------------------------
# 4. /dev/net/tun (slirp4netns needs it; default mode 0600 root-only here)
# --------------------------------------------------------------------------
if [[ ! -c /dev/net/tun ]]; then
    log "creating /dev/net/tun"
    mkdir -p /dev/net
    mknod /dev/net/tun c 10 200
fi
if [[ $(stat -c %a /dev/net/tun) != 666 ]]; then
    log "chmod 0666 /dev/net/tun"
    chmod 0666 /dev/net/tun
fi

# --------------------------------------------------------------------------
# 5. shared / (podman warns "\"/\" is not a shared mount" otherwise)
# --------------------------------------------------------------------------
if [[ $(findmnt -no PROPAGATION / 2>/dev/null || true) != shared ]]; then
    mount --make-shared / 2>/dev/null || log "warning: mount --make-shared / failed (ignored)"
fi

# --------------------------------------------------------------------------
# 6. per-user containers.conf
# --------------------------------------------------------------------------
# Detection (only apply workarounds where the host needs them):
#   * cgroup_manager: podman's default "systemd" needs systemd as PID 1 plus a
#     user session bus; without systemd (containers, CI sandboxes:
#     /run/systemd/system absent) use "cgroupfs". Also events_logger = "file"
#     (the default "journald" needs systemd-journald).
#   * runtime: crun 1.8 (Debian 12's default OCI runtime) refuses to run on
#     cgroups v1 / hybrid hosts ("crun: cgroups in hybrid mode not supported,
#     drop all controllers from cgroupv2"); runc works. Detected as
#     /sys/fs/cgroup not being a cgroup2 mount (pure v1, or hybrid with
#     /sys/fs/cgroup/unified). runc is installed with apt-get if missing.
#   * default_ulimits: rootless podman cannot raise limits above the caller's
#     hard limit; when the hard nofile limit is below podman's usual 1048576,
#     pin nofile/nproc to 1024 so container creation does not fail on setrlimit.
CGROUP_V2=0
[[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]] && CGROUP_V2=1
conf_engine=()
conf_containers=()
if (( ! HAVE_SYSTEMD )); then
    conf_engine+=('cgroup_manager = "cgroupfs"')
    conf_engine+=('events_logger = "file"')
fi
if (( ! CGROUP_V2 )); then
    if ! command -v runc >/dev/null 2>&1 && [[ ! -x /usr/sbin/runc ]]; then
        if command -v apt-get >/dev/null; then
            log "cgroups v1/hybrid host: crun cannot run containers here; installing runc (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends runc >/dev/null \
                || die "apt-get install runc failed; install runc by hand"
        else
            die "cgroups v1/hybrid host needs runc (crun does not support it); install runc"
        fi
    fi
    conf_engine+=('runtime = "runc"')
fi
hard_nofile=$(runuser -u "$USER_NAME" -- sh -c 'ulimit -Hn')
if [[ $hard_nofile != unlimited ]] && (( hard_nofile < 1048576 )); then
    conf_containers+=('default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]')
fi

CONF_DIR=$USER_HOME/.config/containers
CONF=$CONF_DIR/containers.conf
want=$(
    echo "# managed by dev/lib/$PROG - host workarounds for rootless podman"
    echo "# (cgroups v2: $CGROUP_V2, systemd: $HAVE_SYSTEMD, hard nofile: $hard_nofile)"
    if ((${#conf_containers[@]})); then echo "[containers]"; printf '%s\n' "${conf_containers[@]}"; fi
    if ((${#conf_engine[@]})); then echo "[engine]"; printf '%s\n' "${conf_engine[@]}"; fi
)
if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$want" ]]; then
    if [[ -f $CONF ]] && ! head -n1 "$CONF" | grep -q "managed by dev/lib/$PROG"; then
        cp -p "$CONF" "$CONF.bak.$(date +%s)"
        log "backed up existing $CONF"
    fi
    log "writing $CONF"
    runuser -u "$USER_NAME" -- mkdir -p "$CONF_DIR"
    tmp=$(mktemp "$CONF_DIR/.containers.conf.XXXXXX")
    printf '%s\n' "$want" >"$tmp"
    chown "$USER_UID:$USER_GID" "$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONF"
    CHANGED_IDS=1
fi

# --------------------------------------------------------------------------
# 7. check podman works as the user
# --------------------------------------------------------------------------
as_user() {
    (cd / && runuser -u "$USER_NAME" -- env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="$USER_HOME" USER="$USER_NAME" LOGNAME="$USER_NAME" \
        XDG_RUNTIME_DIR="$RUNTIME_DIR" "$@")
}
fmt='{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Host.CgroupsVersion}} {{.Store.GraphDriverName}}'
if (( CHANGED_IDS )); then
    log "configuration changed: podman system migrate"
    as_user podman system migrate >/dev/null 2>&1 || true
fi
if ! info=$(as_user podman info --format "$fmt" 2>&1); then
    log "podman info failed, trying podman system migrate:"
    printf '%s\n' "$info" >&2
    as_user podman system migrate >/dev/null 2>&1 || true
    info=$(as_user podman info --format "$fmt" 2>&1) \
        || { printf '%s\n' "$info" >&2; die "podman does not work for $USER_NAME"; }
fi
info=$(tail -n1 <<<"$info")
log "ok: $USER_NAME (uid $USER_UID) rootless podman: runtime/cgroup-manager/cgroups/storage = $info"
