#!/usr/bin/env bash
# Runs homeport's whole test suite on a fresh machine: installs what the tests need (PostgreSQL
# 15 server and client, Redis, PgBouncer, Prometheus, the drivers of the client tests), then runs
# every unit and integration test against real servers.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh http_      # only tests whose name contains "http_" (passed to cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)   # the end-to-end alert test and promtool
command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer)     # the sandbox behind a transaction pooler (tests/it/pooler.rs)
command -v openssl >/dev/null 2>&1 || need+=(openssl)         # a throwaway certificate for the TLS test
if [ ${#need[@]} -gt 0 ]; then
    echo "test.sh: installing ${need[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    # PostgreSQL refuses to run as root; the sandbox runs it as this unprivileged user.
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# Driver suites for the wire endpoint (tests/it/wire_clients.rs): psycopg 3 and asyncpg from PyPI,
# node-postgres from npm.
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c "import psycopg, asyncpg, sqlalchemy" 2>/dev/null; then
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install --quiet --disable-pip-version-check "psycopg[binary]>=3.1" "asyncpg>=0.29" "sqlalchemy>=2.0"
fi
if [ ! -d tests/clients/node_modules/pg ]; then
    command -v npm >/dev/null 2>&1 || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    (cd tests/clients && npm install --silent --no-audit --no-fund)
fi

cargo test --all-targets "$@"

# Deployment artifacts: Helm chart values and rendered manifests against their schemas, alert
# rules through promtool (check + unit tests), the Grafana dashboard's structure and metric names.
if [ $# -eq 0 ]; then
    ./k8s/tests/run.sh
fi
