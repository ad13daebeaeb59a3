#!/usr/bin/env bash
# podman-service.sh <user> <socket-path> start|stop|status     (run as root)
#
# Runs podman's Docker-compatible API (`podman system service --time=0
# unix://<socket>`) as the rootless <user>, detached (setsid), logging to
# <socket>.log, pid in <socket>.pid. `start` waits until
# `curl --unix-socket <socket> http://d/_ping` answers OK.
#
# Idempotent: `start` when already answering does nothing; `stop` when not
# running does nothing. Note: after `podman system reset` (as the user) the
# service must be restarted (stop + start).
set -euo pipefail

PROG=podman-service.sh
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() { echo "usage: $PROG <user> <socket-path> start|stop|status" >&2; exit 2; }
[[ $# -eq 3 ]] || usage
USER_NAME=$1
SOCK=$2
ACTION=$3
[[ $SOCK == /* ]] || die "socket path must be absolute: '$SOCK'"
[[ $(id -u) -eq 0 ]] || die "must run as root"
getent passwd "$USER_NAME" >/dev/null || die "no such user '$USER_NAME' (run podman-user.sh first)"
USER_UID=$(id -u "$USER_NAME")
USER_GID=$(id -g "$USER_NAME")
USER_HOME=$(getent passwd "$USER_NAME" | cut -d: -f6)
RUNTIME_DIR=/run/user/$USER_UID
PIDFILE=$SOCK.pid
LOGFILE=$SOCK.log

ping_ok() { [[ $(curl -s -m 2 --unix-socket "$SOCK" http://d/_ping 2>/dev/null) == OK ]]; }

# alive: exists and is not a zombie (our daemons are reparented to PID 1,
# which in some sandboxes reaps late)
. "$(dirname "$0")/proc.sh"

running_pid() {  # pid of the service we started for this socket
    local pid
    [[ -f $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "system service --time=0 unix://$SOCK" || return 1
    echo "$pid"
}

do_start() {
    local pid i
    [[ -d $RUNTIME_DIR ]] || die "$RUNTIME_DIR missing (run podman-user.sh first)"
    if pid=$(running_pid) && ping_ok; then
        log "already running: $SOCK (pid $pid)"
        return 0
    fi
    if [[ -z ${pid:-} ]]; then
        if ping_ok; then
            die "$SOCK already answers but was not started by $PROG (no valid $PIDFILE); not touching it"
        fi
        local dir
        dir=$(dirname "$SOCK")
        if [[ ! -d $dir ]]; then
            install -d -m 0700 -o "$USER_UID" -g "$USER_GID" "$dir"
        fi
        runuser -u "$USER_NAME" -- test -w "$dir" || die "$USER_NAME cannot write $dir"
        [[ -S $SOCK || ! -e $SOCK ]] || die "$SOCK exists and is not a socket"
        rm -f "$SOCK"   # stale socket from a dead service
        : >>"$LOGFILE"
        chown "$USER_UID:$USER_GID" "$LOGFILE"
        log "starting podman system service as $USER_NAME on unix://$SOCK (log $LOGFILE)"
        # setpriv execs (no intermediate process, unlike runuser), so $! is
        # podman's own pid and `stop` can signal it directly.
        ( cd / && close_inherited && exec setsid setpriv --reuid="$USER_UID" --regid="$USER_GID" --init-groups \
            env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME="$USER_HOME" USER="$USER_NAME" LOGNAME="$USER_NAME" \
            XDG_RUNTIME_DIR="$RUNTIME_DIR" \
            podman system service --time=0 "unix://$SOCK" </dev/null >>"$LOGFILE" 2>&1 ) &
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    for ((i = 0; i < 150; i++)); do
        if ping_ok; then
            log "ready: $SOCK (pid $pid)"
            return 0
        fi
        if ! alive "$pid"; then
            tail -n 20 "$LOGFILE" >&2 || true
            rm -f "$PIDFILE"
            die "podman system service exited during start-up (log above: $LOGFILE)"
        fi
        sleep 0.1
    done
    tail -n 20 "$LOGFILE" >&2 || true
    die "podman service (pid $pid) did not answer _ping on $SOCK within 15 s"
}

do_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$PIDFILE"
        log "not running: $SOCK"
        return 0
    fi
    stop_pid "$pid" "podman system service ($SOCK)"
    rm -f "$PIDFILE" "$SOCK"
}

do_status() {
    local pid
    if pid=$(running_pid) && ping_ok; then
        echo "running: $SOCK pid $pid"
        return 0
    fi
    echo "not running: $SOCK"
    return 3
}

case $ACTION in
    start)  do_start ;;
    stop)   do_stop ;;
    status) do_status ;;
    *)      usage ;;
esac
