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
