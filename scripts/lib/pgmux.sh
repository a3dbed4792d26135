# shellcheck shell=bash
# Build and run pgmux for scripts. Requires lib/common.sh and lib/deps.sh.

PGMUX_BIN=${PGMUX_BIN:-$(target_dir)/release/pgmux}

pgmux_build() {
    require_cargo
    log "building pgmux (cargo build --release -p pgmux)"
    (cd "$PGMUX_ROOT" && cargo build --release -p pgmux) || die "cargo build failed"
    PGMUX_BIN=$(target_dir)/release/pgmux
}

# pgmux_start DIR PORT SERVER_HOST SERVER_PORT [POOL_SIZE [POOL_MODE [ARGS]]]
# ARGS: more command-line arguments for pgmux, split at spaces (e.g. "-v").
# Writes DIR/pooler.toml (trust auth, every database name forwarded to the
# server) and DIR/userlist.txt, starts pgmux in the background with its log in
# DIR/pgmux.log, and waits until it accepts TCP. Sets PGMUX_PID.
pgmux_start() {
    local dir=$1 port=$2 host=$3 sport=$4 size=${5:-20} mode=${6:-transaction} args=()
    [[ -z ${7:-} ]] || read -r -a args <<<"$7"
    [[ -x $PGMUX_BIN ]] || die "$PGMUX_BIN not found (cargo build --release -p pgmux)"
    cat >"$dir/pooler.toml" <<TOML
[pooler]
listen_addr = "127.0.0.1"
listen_port = $port
unix_socket_dir = "$dir"
listeners = 2
auth_type = "trust"
auth_file = "$dir/userlist.txt"
pool_mode = "$mode"
default_pool_size = $size
max_client_conn = 10000

[databases."*"]
host = "$host"
port = $sport
TOML
    printf '"%s" ""\n' postgres alice bob "${USER:-root}" >"$dir/userlist.txt"
    "$PGMUX_BIN" "${args[@]}" "$dir/pooler.toml" </dev/null >"$dir/pgmux.log" 2>&1 &
    PGMUX_PID=$!
    cleanup_add "pgmux_stop $PGMUX_PID"
    if ! wait_port "$port" 15; then
        tail -n 40 "$dir/pgmux.log" >&2
        die "pgmux did not listen on 127.0.0.1:$port within 15 s (log: $dir/pgmux.log)"
    fi
    log "pgmux (pid $PGMUX_PID) on 127.0.0.1:$port -> $host:$sport, pool_size $size, $mode mode"
}

# pgmux_stop PID: SIGINT (safe shutdown), up to 10 s, then SIGKILL; then SIGKILL for any
# worker or listener the supervisor left behind.
pgmux_stop() {
    local pid=$1 kids _
    kill -0 "$pid" 2>/dev/null || return 0
    kids=$(proc_descendants "$pid")
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pgmux $pid ignored SIGINT for 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    # shellcheck disable=SC2086
    [[ -n $kids ]] && kill -KILL $kids 2>/dev/null
    return 0
}
