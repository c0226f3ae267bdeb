#!/usr/bin/env bash
# Optimistic transactions: ORM-style `BEGIN; SELECT ...; COMMIT` transactions of a user homed in
# eu, sent through the us sidecar, next to the same script straight to the us replica of eu and
# through PgBouncer (transaction pooling) in front of it, in one run; then the share of those
# transactions the local replica served, and the extra latency of a transaction that reads then
# writes (promoted to the eu primary) against the same transaction with optimistic transactions
# switched off for the session.
#
#   benches/optimistic.sh [seconds]     (default 15 s per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
BASE_PORT=${BENCH_BASE_PORT:-7680}
DIR=$(mktemp -d /tmp/homeport-optbench.XXXXXX)
chmod 755 "$DIR"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v pgbouncer >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
BIN=${HOMEPORT_BIN:-./target/release/homeport}
[ -n "${HOMEPORT_BIN:-}" ] || cargo build --release --quiet
"$BIN" dev --dir "$DIR/sandbox" --base-port "$BASE_PORT" >"$DIR/dev.log" 2>&1 &
DEV_PID=$!
BOUNCER=""
cleanup() {
    [ -n "$BOUNCER" ] && kill "$BOUNCER" 2>/dev/null || true
    kill -INT "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
for _ in $(seq 1 900); do [ -f "$DIR/sandbox/endpoints.json" ] && break; sleep 0.1; done
json() { python3 -c "import json; e=json.load(open('$DIR/sandbox/endpoints.json')); print($1)"; }
port_of() { python3 -c "import sys; print(sys.argv[1].split(':')[2].split('/')[0])" "$1"; }
EU_PRIMARY=$(port_of "$(json "e['regions'][0]['primary']")")
EU_REPLICA_IN_US=$(port_of "$(json "e['regions'][0]['replicas']['us']")")
EU_HTTP=$(json "e['regions'][0]['http']")
US_WIRE=$((BASE_PORT + 11))
US_OPS="http://127.0.0.1:$((BASE_PORT + 12))"

"$PGBIN/pgbench" -i -q -s 5 -h 127.0.0.1 -p "$EU_PRIMARY" -U app app >/dev/null 2>&1
curl -sf -X PUT "$EU_HTTP/v1/users/bench-user/home" -H 'content-type: application/json' -d '{"home_region":"eu"}' >/dev/null
sleep 2

d="$DIR/bouncer"; mkdir -p "$d"
BOUNCER_PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
printf '"app" ""\n' >"$d/users.txt"
cat >"$d/pgbouncer.ini" <<INI
[databases]
app = host=127.0.0.1 port=$EU_REPLICA_IN_US dbname=app user=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $d/users.txt
pool_mode = transaction
default_pool_size = 20
logfile = $d/pgbouncer.log
pidfile = $d/pgbouncer.pid
INI
if [ "$(id -u)" = 0 ]; then chown -R postgres "$d"; runuser -u postgres -- pgbouncer "$d/pgbouncer.ini" >/dev/null 2>&1 &
else pgbouncer "$d/pgbouncer.ini" >/dev/null 2>&1 & fi
BOUNCER=$!
sleep 1

cat >"$DIR/read.sql" <<'SQL'
\set aid random(1, 500000)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
COMMIT;
SQL
cat >"$DIR/write.sql" <<'SQL'
\set aid random(1, 500000)
\set delta random(-5000, 5000)
BEGIN;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
COMMIT;
SQL
chmod 644 "$DIR"/*.sql

pgb() { # port script clients [PGOPTIONS] -> "tps latency_ms"
    local out
    out=$(PGOPTIONS="${4:-}" "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$1" -U app -f "$2" -c "$3" -j 2 -T "$SECS" app 2>&1 || true)
    echo "$(echo "$out" | awk '/^tps/ {print $3; exit}') $(echo "$out" | awk '/^latency average/ {print $4; exit}')"
}
metric() { curl -sf "$US_OPS/metrics" | awk -v m="$1" 'index($0, m) == 1 {print $2}' | head -1; }
ratio() { python3 -c "
import sys
try: print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')
except ValueError: print('-')" "$1" "$2"; }

HP="-c homeport.user=bench-user"
read -r D_TPS D_LAT < <(pgb "$EU_REPLICA_IN_US" "$DIR/read.sql" 8)
read -r B_TPS B_LAT < <(pgb "$BOUNCER_PORT" "$DIR/read.sql" 8)
RO0=$(metric 'homeport_optimistic_transactions_total{result="read_only"}'); RO0=${RO0:-0}
PR0=$(metric 'homeport_optimistic_transactions_total{result="primary"}'); PR0=${PR0:-0}
read -r H_TPS H_LAT < <(pgb "$US_WIRE" "$DIR/read.sql" 8 "$HP")
RO1=$(metric 'homeport_optimistic_transactions_total{result="read_only"}'); RO1=${RO1:-0}
PR1=$(metric 'homeport_optimistic_transactions_total{result="primary"}'); PR1=${PR1:-0}
read -r HO_TPS HO_LAT < <(pgb "$US_WIRE" "$DIR/read.sql" 8 "$HP -c homeport.optimistic_transactions=off")

printf "%-44s %10s %12s %8s\n" "BEGIN; SELECT; COMMIT (8 clients, ${SECS}s)" "tps" "latency ms" "vs direct"
printf "%-44s %10s %12s %8s\n" "direct to the us replica of eu" "$D_TPS" "$D_LAT" "1.00"
printf "%-44s %10s %12s %8s\n" "PgBouncer (transaction mode) to it" "$B_TPS" "$B_LAT" "$(ratio "$B_TPS" "$D_TPS")"
printf "%-44s %10s %12s %8s\n" "homeport us, optimistic (default)" "$H_TPS" "$H_LAT" "$(ratio "$H_TPS" "$D_TPS")"
printf "%-44s %10s %12s %8s\n" "homeport us, optimistic off (eu primary)" "$HO_TPS" "$HO_LAT" "$(ratio "$HO_TPS" "$D_TPS")"
python3 -c "
ro, pr = float('$RO1') - float('$RO0'), float('$PR1') - float('$PR0')
print(f'read-only transactions served by the local replica: {ro:.0f} of {ro+pr:.0f} ({100*ro/max(ro+pr,1):.2f}%)')"

read -r W_TPS W_LAT < <(pgb "$US_WIRE" "$DIR/write.sql" 4 "$HP")
read -r WO_TPS WO_LAT < <(pgb "$US_WIRE" "$DIR/write.sql" 4 "$HP -c homeport.optimistic_transactions=off")
CONF=$(metric 'homeport_optimistic_transactions_total{result="conflict"}')
PROM=$(metric 'homeport_optimistic_transactions_total{result="promoted"}')
printf "%-44s %10s %12s\n" "BEGIN; SELECT; UPDATE; COMMIT (4 clients)" "tps" "latency ms"
printf "%-44s %10s %12s\n" "homeport us, promoted to the eu primary" "$W_TPS" "$W_LAT"
printf "%-44s %10s %12s\n" "homeport us, optimistic off" "$WO_TPS" "$WO_LAT"
echo "promoted ${PROM:-0}, conflicts (40001) ${CONF:-0}; extra latency of a promoted transaction: $(python3 -c "print(f'{float(\"$W_LAT\")-float(\"$WO_LAT\"):+.3f} ms')" 2>/dev/null || echo -)"
PINS=$(curl -sf "$US_OPS/metrics" | awk '/^homeport_wire_pins_total/ {s+=$2} END {print s+0}')
echo "wire sessions pinned during the run: $PINS"
