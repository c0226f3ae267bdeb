#!/usr/bin/env bash
# Point-select throughput through homeport's HTTP API vs. pgbench straight against the same
# replica, in one run on the same machine.
#
#   benches/http_vs_direct.sh [seconds]      (default 20 s per measurement)
#
# Starts a two-region `homeport dev` sandbox (release build), loads pgbench tables into the eu
# shard, and measures:
#   direct:  pgbench -S -c 8 -j 2 against the replica of the eu shard located in us
#   sidecar: wrk -c 8 -t 2 POST /v1/query (point select by primary key) through the us sidecar,
#            as a user homed in eu, so every read is served by that same replica
# and prints the ratio sidecar req/s / direct tps and the sidecar's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
BASE_PORT=${BENCH_BASE_PORT:-7600}
DIR=$(mktemp -d /tmp/homeport-bench.XXXXXX)
chmod 755 "$DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v wrk >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

# HOMEPORT_BIN runs another build (e.g. a release build of an older commit) instead.
if [ -z "${HOMEPORT_BIN:-}" ]; then
    cargo build --release --quiet
    HOMEPORT_BIN=./target/release/homeport
fi
"$HOMEPORT_BIN" dev --dir "$DIR/sandbox" --base-port "$BASE_PORT" >"$DIR/dev.log" 2>&1 &
DEV_PID=$!
cleanup() { kill -INT "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 600); do [ -f "$DIR/sandbox/endpoints.json" ] && break; sleep 0.1; done
[ -f "$DIR/sandbox/endpoints.json" ] || { cat "$DIR/dev.log"; exit 1; }

json() { python3 -c "import json,sys; e=json.load(open('$DIR/sandbox/endpoints.json')); print($1)"; }
EU_PRIMARY_PORT=$(json "e['regions'][0]['primary'].split(':')[2].split('/')[0]")
REPLICA_PORT=$(json "e['regions'][0]['replicas']['us'].split(':')[2].split('/')[0]")
US_HTTP=$(json "e['regions'][1]['http']")
ROWS=500000

"$PGBIN/pgbench" -i -q -s $((ROWS / 100000)) -h 127.0.0.1 -p "$EU_PRIMARY_PORT" -U postgres app >/dev/null 2>&1
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$EU_PRIMARY_PORT" -U postgres app -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO app" >/dev/null
curl -sf -X PUT "$US_HTTP/v1/users/bench-user/home" -H 'content-type: application/json' -d '{"home_region":"eu"}' >/dev/null
# Wait for the replica to have the tables, then warm both paths.
for _ in $(seq 1 200); do
    n=$("$PGBIN/psql" -X -qAt -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres app -c "select count(*) from pg_class where relname='pgbench_accounts'")
    [ "$n" = 1 ] && break; sleep 0.1
done
served=$(curl -s -D - -o /dev/null "$US_HTTP/v1/query" -H 'content-type: application/json' -H 'homeport-user: bench-user' \
    -d '{"sql":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":[1]}' | tr -d '\r' | awk -F': ' 'tolower($1)=="homeport-served-by"{print $2}')
[ "$served" = "us/replica" ] || { echo "expected us/replica, got '$served'"; tail -5 "$DIR/dev.log"; exit 1; }
SIDECAR_PID=$(pgrep -f "serve --config $DIR/sandbox/us/homeport.toml")

"$PGBIN/pgbench" -S -c 8 -j 2 -T 3 -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres app >/dev/null 2>&1
BENCH_ROWS=$ROWS wrk -t 2 -c 8 -d 3s -s benches/point_select.lua "$US_HTTP" >/dev/null

direct=$("$PGBIN/pgbench" -S -c 8 -j 2 -T "$SECS" -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres app 2>/dev/null \
    | awk '/^tps/ {print $3; exit}')

peak_rss=0
( while kill -0 "$SIDECAR_PID" 2>/dev/null; do
      awk '/VmRSS/ {print $2}' "/proc/$SIDECAR_PID/status"; sleep 0.5
  done ) >"$DIR/rss.txt" 2>/dev/null &
RSS_PID=$!
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SIDECAR_PID/stat"; }
ticks_before=$(cpu_ticks)
BENCH_ROWS=$ROWS wrk -t 2 -c 8 -d "${SECS}s" --latency -s benches/point_select.lua "$US_HTTP" >"$DIR/wrk.txt"
ticks_after=$(cpu_ticks)
kill "$RSS_PID" 2>/dev/null || true
requests=$(awk '/requests in/ {print $1}' "$DIR/wrk.txt")
cpu_us=$(python3 -c "print(f'{($ticks_after - $ticks_before) * 1e6 / $(getconf CLK_TCK) / $requests:.0f}')")
peak_rss=$(sort -n "$DIR/rss.txt" | tail -1)
sidecar=$(awk '/^Requests\/sec/ {print $2}' "$DIR/wrk.txt")
if grep -q "Non-2xx" "$DIR/wrk.txt"; then grep "Non-2xx" "$DIR/wrk.txt"; echo "sidecar answered errors"; exit 1; fi
p50=$(awk '/^ +50%/ {print $2}' "$DIR/wrk.txt")
p99=$(awk '/^ +99%/ {print $2}' "$DIR/wrk.txt")

echo "point select, 8 connections, ${SECS}s each, same replica"
printf "%-40s %12s\n" "pgbench -S -c 8 direct to replica (tps)" "$direct"
printf "%-40s %12s   p50 %s p99 %s\n" "wrk -c 8 via homeport HTTP (req/s)" "$sidecar" "$p50" "$p99"
printf "%-40s %12s\n" "ratio sidecar / direct" "$(python3 -c "print(f'{$sidecar/$direct:.2f}')")"
printf "%-40s %12s\n" "sidecar CPU per request (µs)" "$cpu_us"
printf "%-40s %12s\n" "sidecar peak RSS (MiB)" "$(python3 -c "print(f'{$peak_rss/1024:.1f}')")"
