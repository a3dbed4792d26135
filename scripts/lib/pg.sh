# shellcheck shell=bash
# Throwaway PostgreSQL 15 for scripts (the shell twin of tests/src/postgres.rs).
# Requires lib/common.sh. After pg_start:
#   PG_HOST=127.0.0.1 PG_PORT=<free port> PG_SOCKDIR=<data dir> PG_DATA PG_LOG
# and PATH starts with PG_BINDIR so psql/pgbench are version 15.
# Stopped (-m immediate) and deleted on exit via cleanup_add.

PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_HOST=127.0.0.1

pg_check_bins() {
    local b
    for b in initdb pg_ctl postgres psql pgbench; do
        [[ -x "$PG_BINDIR/$b" ]] || die "$PG_BINDIR/$b missing: install postgresql-15 and postgresql-client-15 (or set PG_BINDIR)"
    done
    export PATH="$PG_BINDIR:$PATH"
}

# pg_start [MAX_CONNECTIONS]
pg_start() {
    local max_conn=${1:-1200} root
    pg_check_bins
    make_temp_dir pgmux-pg
    root=$TEMP_DIR
    PG_DATA=$root/data
    PG_SOCKDIR=$PG_DATA
    PG_LOG=$PG_DATA/postgres.log
    PG_PORT=$(free_port)
    (cd "$root" && as_pg_owner "$PG_BINDIR/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 \
        --locale=C --no-sync --no-instructions >"$root/initdb.log" 2>&1) ||
        { cat "$root/initdb.log" >&2; die "initdb failed"; }
    cat >>"$PG_DATA/postgresql.conf" <<CONF
# added by scripts/lib/pg.sh
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_SOCKDIR'
max_connections = $max_conn
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
max_prepared_transactions = 0
log_min_messages = warning
CONF
    cat >"$PG_DATA/pg_hba.conf" <<HBA
local all all trust
host all all 127.0.0.1/32 trust
HBA
    if is_root; then chown postgres:postgres "$PG_DATA/pg_hba.conf"; fi
    cleanup_add pg_stop
    (cd "$root" && as_pg_owner "$PG_BINDIR/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t 60 \
        </dev/null >/dev/null) || { tail -n 30 "$PG_LOG" >&2; die "pg_ctl start failed"; }
    export PG_HOST PG_PORT PG_SOCKDIR PG_DATA PG_LOG
    log "PostgreSQL 15 on 127.0.0.1:$PG_PORT (max_connections=$max_conn, data $PG_DATA)"
}

pg_stop() {
    [[ -n ${PG_DATA:-} && -d $PG_DATA ]] || return 0
    (cd / && as_pg_owner "$PG_BINDIR/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 30 \
        </dev/null >/dev/null 2>&1) || true
}

# pg_psql DB SQL: as the postgres role over the Unix socket; prints tuples only.
pg_psql() {
    "$PG_BINDIR/psql" -X -A -t -q -v ON_ERROR_STOP=1 -h "$PG_SOCKDIR" -p "$PG_PORT" \
        -U postgres -d "$1" -c "$2" </dev/null
}

# pg_restart: `pg_ctl restart -m fast` (every backend is terminated, clients see 57P01), waiting until it accepts
# connections again.
pg_restart() {
    (cd / && as_pg_owner "$PG_BINDIR/pg_ctl" restart -D "$PG_DATA" -m fast -l "$PG_LOG" -w -t 60 \
        </dev/null >/dev/null) || { tail -n 30 "$PG_LOG" >&2; die "pg_ctl restart failed"; }
}
