#!/usr/bin/env bash
# test-registry.sh start|stop|status [port]     (default port 5055; run as root)
#
# A real image registry (Debian's `docker-registry`, distribution 2.8) for the
# end-to-end tests, bound to 127.0.0.1:<port> only, plain HTTP.
#
#   storage : /var/lib/mcp-test-registry/<port>/data
#   config  : /var/lib/mcp-test-registry/<port>/config.yml
#   log     : /var/lib/mcp-test-registry/<port>/registry.log
#   pidfile : /run/mcp-test-registry/<port>.pid
#
# `start` also writes /etc/containers/registries.conf.d/50-mcp-test-registry.conf
# marking 127.0.0.1:<port> and localhost:<port> insecure (plain HTTP) for every
# port ever started here, so (rootless) podman can pull/push without
# --tls-verify=false. podman 4.3 (containers/image 5.23) reads
# /etc/containers/registries.conf.d/*.conf (v2 format) for every user.
#
# Idempotent: `start` when already running only re-checks; `stop` when not
# running does nothing. `status` exits 0 when running and answering, 3 if not.
set -euo pipefail

PROG=test-registry.sh
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() { echo "usage: $PROG start|stop|status [port]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
ACTION=$1
PORT=${2:-5055}
[[ $PORT =~ ^[0-9]+$ ]] && (( PORT >= 1 && PORT <= 65535 )) || die "invalid port '$PORT'"

BIN=/usr/bin/docker-registry
STATE_ROOT=/var/lib/mcp-test-registry
STATE=$STATE_ROOT/$PORT
RUN_DIR=/run/mcp-test-registry
PIDFILE=$RUN_DIR/$PORT.pid
CONFIG=$STATE/config.yml
LOGFILE=$STATE/registry.log
DROPIN=/etc/containers/registries.conf.d/50-mcp-test-registry.conf
URL=http://127.0.0.1:$PORT/v2/

# pid of our registry for this port, if it is running
# alive: exists and is not a zombie (our daemons are reparented to PID 1,
# which in some sandboxes reaps late)
. "$(dirname "$0")/proc.sh"

running_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    # guard against pid reuse: must be docker-registry with our config
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$BIN serve $CONFIG" || return 1
    echo "$pid"
}
answering() { curl -sf -m 2 -o /dev/null "$URL"; }

write_dropin() {
    local p want
    want=$(
        echo "# managed by dev/lib/$PROG: local test registries (plain HTTP, loopback only)"
        for d in "$STATE_ROOT"/*/; do
            p=$(basename "$d")
            [[ $p =~ ^[0-9]+$ ]] || continue
            printf '\n[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' "$p"
            printf '\n[[registry]]\nlocation = "localhost:%s"\ninsecure = true\n' "$p"
        done
    )
    if [[ ! -f $DROPIN ]] || [[ $(<"$DROPIN") != "$want" ]]; then
        log "writing $DROPIN"
        mkdir -p "$(dirname "$DROPIN")"
        printf '%s\n' "$want" >"$DROPIN.tmp"
        chmod 0644 "$DROPIN.tmp"
        mv -f "$DROPIN.tmp" "$DROPIN"
    fi
}

do_start() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    [[ -x $BIN ]] || die "$BIN not found (apt-get install docker-registry)"
    install -d -m 0755 "$STATE_ROOT" "$STATE" "$STATE/data" "$RUN_DIR"
    write_dropin
    local pid
    if pid=$(running_pid); then
        if answering; then
            log "already running on 127.0.0.1:$PORT (pid $pid)"
            return 0
        fi
        log "pid $pid exists but $URL does not answer yet; waiting"
    else
        if answering || ss -Hltn "sport = :$PORT" | grep -q .; then
            die "port $PORT is already in use by another process:" \
                "$(ss -Hltnp "sport = :$PORT" | head -n3)"
        fi
        cat >"$CONFIG.tmp" <<EOF
# managed by dev/lib/$PROG
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $STATE/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$PORT
  headers:
    X-Content-Type-Options: [nosniff]
EOF
        mv -f "$CONFIG.tmp" "$CONFIG"
        log "starting docker-registry on 127.0.0.1:$PORT (storage $STATE/data, log $LOGFILE)"
        # setsid: own session, detached from our terminal / process group;
        # no descriptor of ours stays open in the long-lived registry.
        ( close_inherited; exec setsid "$BIN" serve "$CONFIG" </dev/null >>"$LOGFILE" 2>&1 ) &
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    local i
    for ((i = 0; i < 100; i++)); do
        if answering; then
            log "ready: $URL (pid $pid)"
            return 0
        fi
        if ! running_pid >/dev/null; then
            tail -n 20 "$LOGFILE" >&2 || true
            rm -f "$PIDFILE"
            die "docker-registry exited during start-up (log above: $LOGFILE)"
        fi
        sleep 0.1
    done
    tail -n 20 "$LOGFILE" >&2 || true
    die "docker-registry (pid $pid) did not answer $URL within 10 s"
}

do_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$PIDFILE"
        log "not running (port $PORT)"
        return 0
    fi
    stop_pid "$pid" "docker-registry (port $PORT)"
    rm -f "$PIDFILE"
}

do_status() {
    local pid
    if pid=$(running_pid) && answering; then
        echo "running: 127.0.0.1:$PORT pid $pid storage $STATE/data"
        return 0
    fi
    echo "not running: 127.0.0.1:$PORT"
    return 3
}

case $ACTION in
    start)  do_start ;;
    stop)   do_stop ;;
    status) do_status ;;
    *)      usage ;;
esac
