# shellcheck shell=bash
# install_deps PKG...: apt-get install the Debian packages that are missing,
# only when root and apt-get exists; otherwise say what is missing and fail.
# Shared by scripts/test, scripts/quickstart and scripts/bench.

_pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_deps() {
    local missing=() pkg
    if ! command -v dpkg-query >/dev/null; then
        # Not Debian: trust that the binaries are there; callers check them.
        return 0
    fi
    for pkg in "$@"; do
        _pkg_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "missing packages: ${missing[*]} (install them, or run as root with apt-get)" >&2
        return 1
    fi
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
}

# The packages every script needs, and pgbouncer for the benchmark.
PGMUX_TEST_PACKAGES=(postgresql-15 postgresql-client-15 pgbouncer)
PGMUX_RUN_PACKAGES=(postgresql-15 postgresql-client-15)

require_cargo() {
    if ! command -v cargo >/dev/null; then
        [[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null || { echo "cargo not found (install Rust via rustup)" >&2; return 1; }
}

# install_driver_deps: the Python and Node.js drivers tests/tests/sessions.rs
# runs (tests/drivers/), installed only when missing. Fails loudly when
# python3 or npm is not there: those tests must never be skipped.
install_driver_deps() {
    local dir=$PGMUX_ROOT/tests/drivers
    command -v python3 >/dev/null || { echo "python3 not found (needed by tests/drivers)" >&2; return 1; }
    if ! python3 -c 'import psycopg, asyncpg' 2>/dev/null; then
        echo "installing Python drivers from $dir/requirements.txt" >&2
        python3 -m pip install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
    fi
    if [[ ! -f $dir/node_modules/pg/package.json ]]; then
        command -v npm >/dev/null || { echo "npm not found (needed by tests/drivers)" >&2; return 1; }
        echo "installing Node.js drivers in $dir (npm ci)" >&2
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    fi
}
