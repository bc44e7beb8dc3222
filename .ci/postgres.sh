#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests that need one
# (tests/jetsearch/test_postgres.py).
#
#   source .ci/postgres.sh      start (or reuse) the server, export JETSEARCH_TEST_POSTGRES_URL
#   .ci/postgres.sh             the same, and print the export line for a shell to eval
#   .ci/postgres.sh stop        stop the server and delete its data directory
#
# Installs Debian's postgresql package and the psycopg2 driver when they are missing. The cluster
# lives in its own data directory (JETSEARCH_PG_DIR, default $TMPDIR/jetsearch-ci-postgres),
# listens on 127.0.0.1 only (port JETSEARCH_PG_PORT, default a free one), trusts loopback
# connections and runs with fsync off: it is for tests, never for data worth keeping. Running
# the script again reuses a server it started earlier. As root, the server runs as the
# postgres user (PostgreSQL refuses to run as root).

_jetsearch_pg_bindir() {
  local candidate
  for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]]; then
      echo "$candidate"
      return 0
    fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  return 1
}

_jetsearch_pg_as_owner() {
  # Run a server command as the user that owns the cluster (postgres when we are root).
  if [[ "$(id -u)" == "0" ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

_jetsearch_pg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_jetsearch_pg_main() {
  local action="${1:-start}"
  local data_dir="${JETSEARCH_PG_DIR:-${TMPDIR:-/tmp}/jetsearch-ci-postgres}"
  local database="jetsearch_test"
  local bindir port

  if ! bindir="$(_jetsearch_pg_bindir)"; then
    if [[ "$action" == "stop" ]]; then
      return 0
    fi
    if [[ "$(id -u)" != "0" ]]; then
      echo "postgres.sh: PostgreSQL is not installed and installing it needs root" \
        "(apt-get install postgresql)" >&2
      return 1
    fi
    echo "postgres.sh: installing Debian's postgresql package" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir="$(_jetsearch_pg_bindir)" || {
      echo "postgres.sh: postgresql installed but initdb / pg_ctl not found" >&2
      return 1
    }
  fi

  if [[ "$action" == "stop" ]]; then
    if [[ -f "$data_dir/PG_VERSION" ]]; then
      _jetsearch_pg_as_owner "$bindir/pg_ctl" -D "$data_dir" -m fast -w stop >/dev/null 2>&1 || true
      rm -rf "$data_dir"
    fi
    return 0
  fi
  if [[ "$action" != "start" ]]; then
    echo "postgres.sh: unknown action '$action' (start or stop)" >&2
    return 2
  fi

  if [[ "$(id -u)" == "0" ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi

  if [[ -f "$data_dir/postmaster.pid" ]] \
    && _jetsearch_pg_as_owner "$bindir/pg_ctl" -D "$data_dir" status >/dev/null 2>&1; then
    # A server this script started earlier: line 4 of postmaster.pid is its port.
    port="$(sed -n 4p "$data_dir/postmaster.pid")"
  else
    rm -rf "$data_dir"
    mkdir -p "$data_dir"
    if [[ "$(id -u)" == "0" ]]; then
      chown postgres: "$data_dir"
    fi
    chmod 700 "$data_dir"
    _jetsearch_pg_as_owner "$bindir/initdb" -D "$data_dir" -U postgres --auth=trust \
      --encoding=UTF8 --no-sync >/dev/null
    port="${JETSEARCH_PG_PORT:-$(_jetsearch_pg_free_port)}"
    _jetsearch_pg_as_owner "$bindir/pg_ctl" -D "$data_dir" -l "$data_dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $data_dir -c fsync=off -c max_connections=200" \
      start >/dev/null || {
      echo "postgres.sh: the server did not start; its log:" >&2
      cat "$data_dir/server.log" >&2
      return 1
    }
  fi

  local psql=("$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -qtA)
  if [[ "$("${psql[@]}" -d postgres \
    -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" != "1" ]]; then
    "${psql[@]}" -d postgres -c "CREATE DATABASE $database" >/dev/null
  fi

  if ! python3 -c "import psycopg2" >/dev/null 2>&1; then
    echo "postgres.sh: installing the psycopg2 driver" >&2
    python3 -m pip install --quiet psycopg2-binary
  fi

  export JETSEARCH_TEST_POSTGRES_URL="postgresql+psycopg2://postgres@127.0.0.1:$port/$database"
  echo "postgres.sh: PostgreSQL on 127.0.0.1:$port, database $database" >&2
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  _jetsearch_pg_main "$@"
  if [[ "${1:-start}" == "start" ]]; then
    echo "export JETSEARCH_TEST_POSTGRES_URL=$JETSEARCH_TEST_POSTGRES_URL"
  fi
else
  _jetsearch_pg_main "$@"
fi
