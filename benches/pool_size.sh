#!/usr/bin/env bash
# How many server connections one sidecar needs: req/s and the connections it opened on the
# primary, for postgres.pool_size 1, 2, 4, 8, 16, under wrk -t 2 -c 8 point selects through the
# HTTP API (intent write, so every request runs on the us primary). docs/fleet.md has a run.
#
#   benches/pool_size.sh [seconds]      (default 5 s per pool size; HOMEPORT_BIN overrides the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
BASE=${BENCH_BASE_PORT:-7800}
DIR=$(mktemp -d /tmp/homeport-pool.XXXXXX)
chmod 755 "$DIR"
if [ -z "${HOMEPORT_BIN:-}" ]; then cargo build --release --quiet; HOMEPORT_BIN=./target/release/homeport; fi
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
"$HOMEPORT_BIN" dev --dir "$DIR/sb" --base-port "$BASE" >"$DIR/dev.log" 2>&1 &
DEV=$!
SIDECAR=
cleanup() { [ -z "$SIDECAR" ] || kill "$SIDECAR" 2>/dev/null || true; kill -INT "$DEV" 2>/dev/null || true; wait "$DEV" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 900); do [ -f "$DIR/sb/endpoints.json" ] && break; sleep 0.2; done
json() { python3 -c "import json; e=json.load(open('$DIR/sb/endpoints.json')); print($1)"; }
P=$(json "e['regions'][1]['primary'].split(':')[2].split('/')[0]")
US_HTTP=$(json "e['regions'][1]['http']")
"$PG/psql" -X -q -h 127.0.0.1 -p "$P" -U postgres app -c "CREATE TABLE kv (k int primary key, v text); INSERT INTO kv SELECT g, 'x' FROM generate_series(1, 10000) g; GRANT ALL ON kv TO app" >/dev/null
curl -sf -X PUT "$US_HTTP/v1/users/bench/home" -H 'content-type: application/json' -d '{"home_region":"us"}' >/dev/null
cat >"$DIR/sel.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["homeport-user"] = "bench"
request = function()
  return wrk.format(nil, "/v1/query", nil, '{"sql":"SELECT v FROM kv WHERE k = $1","params":[' .. math.random(1, 10000) .. '],"intent":"write"}')
end
LUA
H=$((BASE + 50)) W=$((BASE + 51)) O=$((BASE + 52))
echo "| postgres.pool_size | req/s (wrk -t 2 -c 8, ${SECS}s) | connections open on the primary afterwards |"
echo "|---:|---:|---:|"
for size in 1 2 4 8 16; do
    # The us config on ports of its own, its own application_name, no probe sharing (one probe
    # connection per endpoint, subtracted below).
    sed -e "s/pool_size = 16/pool_size = $size\napplication_name = \"homeport-pool\"/" \
        -e "s/127.0.0.1:$((BASE + 10))\"/127.0.0.1:$H\"/" -e "s/127.0.0.1:$((BASE + 11))\"/127.0.0.1:$W\"/" \
        -e "s/127.0.0.1:$((BASE + 12))\"/127.0.0.1:$O\"/" -e "s/^\[probe\]$/[probe]\nshared = false/" \
        "$DIR/sb/us/homeport.toml" >"$DIR/pool.toml"
    "$HOMEPORT_BIN" serve --config "$DIR/pool.toml" >"$DIR/pool.log" 2>&1 &
    SIDECAR=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$O/readyz" >/dev/null && break; sleep 0.1; done
    wrk -t 2 -c 8 -d 2s -s "$DIR/sel.lua" "http://127.0.0.1:$H" >/dev/null
    rps=$(wrk -t 2 -c 8 -d "${SECS}s" -s "$DIR/sel.lua" "http://127.0.0.1:$H" | awk '/Requests\/sec/ {print $2}')
    open=$("$PG/psql" -X -qAt -h 127.0.0.1 -p "$P" -U postgres app -c "select count(*) - 1 from pg_stat_activity where application_name = 'homeport-pool' and datname = 'app'")
    echo "| $size | $rps | $open |"
    kill "$SIDECAR"; wait "$SIDECAR" 2>/dev/null || true; SIDECAR=
done
