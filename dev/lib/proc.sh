# proc.sh: process helpers sourced by the dev/lib scripts (needs log()).

# alive PID: the process exists and is not a zombie (PID 1 may reap late).
alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [[ $st != Z ]]; }

# stop_pid PID LABEL: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
    local pid=$1 label=$2 i
    log "stopping $label pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "still alive after 10 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

# close_inherited: closes every file descriptor above 2 of the calling shell.
# Daemons started for the tests call it first, so they never keep open what
# their launcher held (a lock file, cargo's jobserver pipe, a test harness's
# pipes): a daemon holding such a descriptor keeps the lock taken or the
# pipe open long after its launcher exited.
close_inherited() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
    done
    return 0
}
