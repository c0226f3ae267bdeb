#!/usr/bin/env bash
# Runs two PostgreSQL drivers' own test suites against four targets and prints the counts table
# of docs/drivers.md: straight to the eu primary of a `homeport dev` sandbox, through PgBouncer
# in transaction mode in front of that primary, and through homeport's eu and us wire endpoints
# (the test user is placed in eu and named with options=-c homeport.user=...).
#
#   ./scripts/peer-suites.sh                       # both suites, all four targets
#   SUITES=psycopg TARGETS="eu us" ./scripts/peer-suites.sh
#   PSYCOPG_ARGS="tests/test_prepared.py" ./scripts/peer-suites.sh   # a subset while iterating
#   HOMEPORT_BIN=path/to/homeport ...              # a build other than target/debug's
#   OPTIMISTIC=on ./scripts/peer-suites.sh           # homeport targets with optimistic transactions
#
# The suites are not part of homeport: they are read from ../shared/peers beside the checkout
# (PEERS overrides), see its README. Not part of CI (it takes a while); homeport's own tests
# cover each defect these suites found. Per-target results (JUnit XML for psycopg, one line per
# file for node-postgres) and the tests that fail only through homeport are left in
# $OUT (default target/peer-suites/results).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

PEERS=${PEERS:-$repo/../shared/peers}
WORK=${WORK:-$repo/target/peer-suites}
OUT=${OUT:-$WORK/results}
BASE_PORT=${BASE_PORT:-7700}
SUITES=${SUITES:-"psycopg node"}
TARGETS=${TARGETS:-"direct pgbouncer eu us"}
PSYCOPG_ARGS=${PSYCOPG_ARGS:-"tests/pq tests/test_connection.py tests/test_cursor.py
  tests/test_cursor_common.py tests/test_cursor_server.py tests/test_copy.py tests/test_prepared.py
  tests/test_pipeline.py tests/test_transaction.py tests/test_sql.py tests/test_notify.py
  tests/test_errors.py tests/test_adapt.py tests/test_tpc.py tests/types"}
PSYCOPG_DIR=$PEERS/psycopg-3.3.4
NODE_DIR=$PEERS/node-postgres-pg-8.23.0
USER_ID=peer-suites
OPTIMISTIC=${OPTIMISTIC:-}
[ -d "$PSYCOPG_DIR/tests" ] && [ -d "$NODE_DIR/test" ] || {
    echo "peer-suites: no peer suites in $PEERS (see ../shared/peers/README.md)" >&2
    exit 2
}
mkdir -p "$WORK" "$OUT"

# --- the drivers, installed once into $WORK --------------------------------------------------
if ! "$WORK/py/bin/python" -c "import psycopg, pytest, pytest_timeout, anyio, pproxy" 2>/dev/null; then
    python3 -m venv "$WORK/py"
    "$WORK/py/bin/pip" install --quiet --disable-pip-version-check \
        "psycopg[binary]==3.3.4" pytest pytest-timeout anyio pproxy
fi
if [ ! -d "$WORK/node/node_modules/pg" ]; then
    mkdir -p "$WORK/node"
    (cd "$WORK/node" && echo '{"private": true}' >package.json &&
        npm install --silent --no-audit --no-fund pg@8.23.0 async@2.6.4 bluebird@3.7.2 co@4.6.0 \
            pg-copy-streams@0.3.0)
fi
# node-postgres's tests load the package as ../../lib: a tree of symlinks puts the published
# package's lib/ beside the peers' test/ (node runs with --preserve-symlinks so paths stay here).
tree=$WORK/node-tree
mkdir -p "$tree"
ln -sfn "$WORK/node/node_modules/pg/lib" "$tree/lib"
ln -sfn "$WORK/node/node_modules" "$tree/node_modules"
ln -sfn "$NODE_DIR/test" "$tree/test"
ln -sfn "$NODE_DIR/package.json" "$tree/package.json"

# --- one sandbox, one PgBouncer --------------------------------------------------------------
if [ -z "${HOMEPORT_BIN:-}" ]; then
    cargo build --quiet
    HOMEPORT_BIN=target/debug/homeport
fi
dir=$WORK/sandbox-$BASE_PORT
rm -rf "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
"$HOMEPORT_BIN" dev --base-port "$BASE_PORT" --dir "$dir" >"$OUT/sandbox.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do [ -s "$dir/endpoints.json" ] && break; sleep 0.2; done
[ -s "$dir/endpoints.json" ] || { echo "peer-suites: the sandbox did not start" >&2; cat "$OUT/sandbox.log" >&2; exit 1; }
field() { "$WORK/py/bin/python" -c "import json,sys,urllib.parse as u; e=json.load(open('$dir/endpoints.json')); r={x['name']: x for x in e['regions']}; print($1)"; }
eu_http=$(field "r['eu']['http']")
primary_port=$(field "u.urlsplit(r['eu']['primary']).port")
eu_port=$(field "u.urlsplit(r['eu']['pg']).port")
us_port=$(field "u.urlsplit(r['us']['pg']).port")
eu_ops=$(field "r['eu']['ops']")
us_ops=$(field "r['us']['ops']")
curl -sf -X PUT "$eu_http/v1/users/$USER_ID/home" -H 'content-type: application/json' \
    -d '{"home_region": "eu"}' >/dev/null
bouncer_port=$((BASE_PORT + 50))
mkdir -p "$dir/pgbouncer"
cat >"$dir/pgbouncer/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$primary_port dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $dir/pgbouncer/users.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options
EOF
echo '"app" ""' >"$dir/pgbouncer/users.txt"
# PgBouncer refuses to run as root: it then runs as the sandbox's PostgreSQL user.
as_user=()
[ "$(id -u)" = 0 ] && as_user=(-u postgres)
pgbouncer "${as_user[@]}" "$dir/pgbouncer/pgbouncer.ini" >"$OUT/pgbouncer.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$bouncer_port) 2>/dev/null && break; sleep 0.1; done
if [[ " $TARGETS " == *" pgbouncer "* ]] && ! (exec 3<>/dev/tcp/127.0.0.1/$bouncer_port) 2>/dev/null; then
    echo "peer-suites: PgBouncer did not start:" >&2
    cat "$OUT/pgbouncer.log" >&2
    exit 1
fi

port_of() {
    case $1 in direct) echo "$primary_port" ;; pgbouncer) echo "$bouncer_port" ;;
        eu) echo "$eu_port" ;; us) echo "$us_port" ;; esac
}
# homeport needs the user; PgBouncer 1.18 and the server need no options.
options_of() {
    case $1 in
        eu | us) echo "-c homeport.user=$USER_ID${OPTIMISTIC:+ -c homeport.optimistic_transactions=$OPTIMISTIC}" ;;
        *) echo "" ;;
    esac
}
# Pins (by reason) and optimistic transactions (by result) of a homeport target's sidecar, as
# one line of `name{labels} value` pairs; the difference of two calls is what a suite caused.
counters_of() {
    local ops
    case $1 in eu) ops=$eu_ops ;; us) ops=$us_ops ;; *) return 0 ;; esac
    curl -sf "$ops/metrics" | grep -E '^homeport_(wire_pins|optimistic_transactions)_total' || true
}
counted() {
    "$WORK/py/bin/python" - "$1" "$2" <<'PY'
import sys
def read(path):
    out = {}
    for line in open(path):
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out
before, after = read(sys.argv[1]), read(sys.argv[2])
diff = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
print(", ".join(f"{k.replace('homeport_', '')} {v:.0f}" for k, v in sorted(diff.items())) or "none")
PY
}
declare -A pins
measure() {
    local t=$1 s=$2
    counters_of "$t" >"$OUT/counters-$s-$t.before"
    "run_$s" "$t"
    counters_of "$t" >"$OUT/counters-$s-$t.after"
    case $t in eu | us) pins[$s-$t]=$(counted "$OUT/counters-$s-$t.before" "$OUT/counters-$s-$t.after") ;; esac
}

# --- the suites --------------------------------------------------------------------------------
declare -A psy node_counts
run_psycopg() {
    local t=$1 port opts dsn
    port=$(port_of "$t")
    opts=$(options_of "$t")
    dsn="postgresql://app@127.0.0.1:$port/app"
    [ -n "$opts" ] && dsn="$dsn?options=$("$WORK/py/bin/python" -c "import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1]))" "$opts")"
    echo "== psycopg via $t ($dsn)"
    # shellcheck disable=SC2086
    (cd "$PSYCOPG_DIR" && PSYCOPG_TEST_DSN=$dsn timeout 3600 "$WORK/py/bin/python" -m pytest \
        -o cache_dir="$WORK/pytest-cache-$t" --timeout 30 -m "not slow" -q -p no:warnings \
        --junitxml="$OUT/psycopg-$t.xml" $PSYCOPG_ARGS >"$OUT/psycopg-$t.log" 2>&1) || true
    tail -n 1 "$OUT/psycopg-$t.log"
    psy[$t]=$("$WORK/py/bin/python" - "$OUT/psycopg-$t.xml" "$OUT/psycopg-$t.failed" <<'PY'
import sys, xml.etree.ElementTree as ET
passed = bad = 0
failed = []
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    kinds = {c.tag for c in case}
    if kinds & {"failure", "error"}:
        bad += 1
        failed.append(case.get("classname", "") + "::" + case.get("name", ""))
    elif "skipped" not in kinds:
        passed += 1
open(sys.argv[2], "w").write("".join(f + "\n" for f in sorted(set(failed))))
print(f"{passed:,} / {bad}")
PY
)
}
run_node() {
    local t=$1 port opts pass=0 fail=0 f rel
    port=$(port_of "$t")
    opts=$(options_of "$t")
    echo "== node-postgres via $t (port $port)"
    : >"$OUT/node-$t.txt"
    while IFS= read -r f; do
        rel=${f#"$tree/"}
        if (cd "$tree" && PGHOST=127.0.0.1 PGPORT=$port PGUSER=app PGDATABASE=app PGOPTIONS=$opts \
            timeout 120 node --preserve-symlinks --preserve-symlinks-main "$f" \
            >"$OUT/node-$t.$(echo "$rel" | tr / _).log" 2>&1); then
            pass=$((pass + 1)); echo "pass $rel" >>"$OUT/node-$t.txt"
        else
            fail=$((fail + 1)); echo "FAIL $rel" >>"$OUT/node-$t.txt"
        fi
    done < <(find -L "$tree/test/integration" -name '*-tests.js' | sort)
    grep '^FAIL' "$OUT/node-$t.txt" | sed 's/^FAIL //' >"$OUT/node-$t.failed" || true
    node_counts[$t]="$pass / $fail"
    echo "$pass passed, $fail failed"
}
for t in $TARGETS; do
    for s in $SUITES; do
        case $s in psycopg | node) measure "$t" "$s" ;; esac
    done
done

# --- the table, and what fails only through homeport -------------------------------------------
echo
echo "| suite | $(for t in $TARGETS; do printf '%s | ' "$t"; done)"
echo "|---|$(for t in $TARGETS; do printf -- '---|'; done)"
for s in $SUITES; do
    case $s in
        psycopg) printf '| psycopg core: passed / failed+errors | ' ;;
        node) printf '| node-postgres test files: passed / failed | ' ;;
    esac
    for t in $TARGETS; do
        case $s in psycopg) printf '%s | ' "${psy[$t]:-}" ;; node) printf '%s | ' "${node_counts[$t]:-}" ;; esac
    done
    echo
done
echo
for key in "${!pins[@]}"; do echo "pins and optimistic transactions, $key: ${pins[$key]}"; done
for s in psycopg node; do
    [ -f "$OUT/$s-direct.failed" ] || continue
    for t in eu us pgbouncer; do
        [ -f "$OUT/$s-$t.failed" ] || continue
        only=$(comm -13 "$OUT/$s-direct.failed" "$OUT/$s-$t.failed")
        [ -z "$only" ] && continue
        echo
        echo "$s: failing via $t but not directly:"
        echo "$only" | sed 's/^/  /'
    done
done
