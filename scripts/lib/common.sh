# shellcheck shell=bash
# Shared helpers for scripts/*: logging, clean-up on exit, free ports,
# running commands as the postgres OS user when we are root.
# Source it; it defines functions and installs one EXIT/INT/TERM trap.

PGMUX_ROOT=${PGMUX_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

# Where cargo puts binaries (honours CARGO_TARGET_DIR, relative to the root).
target_dir() {
    local t=${CARGO_TARGET_DIR:-target}
    [[ $t == /* ]] || t=$PGMUX_ROOT/$t
    echo "$t"
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Clean-up actions run in reverse order of registration, once, on any exit.
_CLEANUPS=()
cleanup_add() { _CLEANUPS+=("$1"); }
_run_cleanups() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#_CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${_CLEANUPS[i]}" || true
    done
    exit "$rc"
}
trap _run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

is_root() { [[ $(id -u) -eq 0 ]]; }

# Raise the open-files limit as far as allowed (1000 pgbench clients need
# ~2000 fds in pgbench, more in a pooler).
raise_nofile() {
    local want=${1:-65536}
    ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# A TCP port on 127.0.0.1 nobody listens on right now.
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

# wait_port PORT [SECONDS]: until something accepts TCP connections there.
wait_port() {
    local port=$1 deadline=$((SECONDS + ${2:-15}))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

# as_pg_owner CMD...: run CMD as the postgres OS user when root (exec'ing in
# place, so $! of a backgrounded call is the command's pid), else as us.
as_pg_owner() {
    if is_root; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME=/tmp USER=postgres "$@"
    else
        "$@"
    fi
}

# make_temp_dir PREFIX: sets TEMP_DIR to a fresh dir, removed on exit, owned
# by postgres when root. (Not $(...)-callable: the clean-up must be registered
# in this shell.)
make_temp_dir() {
    TEMP_DIR=$(mktemp -d "/tmp/${1:-pgmux}-XXXXXX")
    chmod 755 "$TEMP_DIR"
    if is_root; then chown postgres:postgres "$TEMP_DIR"; fi
    cleanup_add "rm -rf '$TEMP_DIR'"
}

# proc_descendants PID: pids of all descendants of PID (not PID itself).
proc_descendants() {
    local root=$1 stat pid ppid rest
    local -A kids=()
    for stat in /proc/[0-9]*/stat; do
        { read -r rest <"$stat"; } 2>/dev/null || continue
        pid=${rest%% *}
        rest=${rest##*) }
        rest=${rest#* }
        ppid=${rest%% *}
        kids[$ppid]+=" $pid"
    done
    local queue=("$root") out=() p
    while ((${#queue[@]})); do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        for pid in ${kids[$p]:-}; do
            out+=("$pid")
            queue+=("$pid")
        done
    done
    echo "${out[*]}"
}
