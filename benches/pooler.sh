#!/usr/bin/env bash
# What `pooler = "transaction"` costs: the us sidecar's config from `homeport dev
# --upstream-pooler` run three ways against the same servers, under the same load:
#   direct        url = the server, pooler = "none"          (statements prepared per connection)
#   direct+txn    url = the server, pooler = "transaction"   (the mode's own cost, no extra hop)
#   pgbouncer+txn url = PgBouncer, pooler = "transaction"    (the whole path behind a pooler)
# Load: wrk -t 2 -c 8 point selects through POST /v1/query (intent write: the us primary), and
# pgbench -M prepared -c 8 with the same select through the wire endpoint. docs/fleet.md has a run.
#
#   benches/pooler.sh [seconds]      (default 5 s per run; HOMEPORT_BIN overrides the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
BASE=${BENCH_BASE_PORT:-7850}
DIR=$(mktemp -d /tmp/homeport-pooler.XXXXXX)
chmod 755 "$DIR"
if [ -z "${HOMEPORT_BIN:-}" ]; then cargo build --release --quiet; HOMEPORT_BIN=./target/release/homeport; fi
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
"$HOMEPORT_BIN" dev --upstream-pooler --dir "$DIR/sb" --base-port "$BASE" >"$DIR/dev.log" 2>&1 &
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
printf '\\set k random(1, 10000)\nSELECT v FROM kv WHERE k = :k;\n' >"$DIR/sel.sql"
H=$((BASE + 50)) W=$((BASE + 51)) O=$((BASE + 52))
echo "| us sidecar | HTTP req/s (wrk -t 2 -c 8, ${SECS}s) | HTTP p50 | wire tps (pgbench -M prepared -c 8, ${SECS}s) | failed |"
echo "|---|---:|---:|---:|---:|"
for variant in direct direct+txn pgbouncer+txn; do
    python3 - "$variant" "$DIR/sb/us/homeport.toml" "$DIR/variant.toml" "$BASE" "$H" "$W" "$O" <<'PY'
import re, sys
variant, src, dst, base, h, w, o = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:]
text = open(src).read()
pat = re.compile(r'url = "([^"]+)", region = "([^"]+)", probe_url = "([^"]+)", pooler = "transaction"')
if variant == "direct":
    text = pat.sub(lambda m: f'url = "{m[3]}", region = "{m[2]}"', text)
elif variant == "direct+txn":
    text = pat.sub(lambda m: f'url = "{m[3]}", region = "{m[2]}", pooler = "transaction"', text)
text = text.replace(f'127.0.0.1:{base + 10}"', f'127.0.0.1:{h}"').replace(f'127.0.0.1:{base + 11}"', f'127.0.0.1:{w}"').replace(f'127.0.0.1:{base + 12}"', f'127.0.0.1:{o}"')
open(dst, "w").write(text)
PY
    "$HOMEPORT_BIN" serve --config "$DIR/variant.toml" >"$DIR/variant.log" 2>&1 &
    SIDECAR=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$O/readyz" >/dev/null && break; sleep 0.1; done
    wrk -t 2 -c 8 -d 2s -s "$DIR/sel.lua" "http://127.0.0.1:$H" >/dev/null
    out=$(wrk -t 2 -c 8 -d "${SECS}s" --latency -s "$DIR/sel.lua" "http://127.0.0.1:$H")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    bench=$(PGOPTIONS="-c homeport.user=bench" "$PG/pgbench" -n -M prepared -c 8 -j 2 -T "$SECS" -f "$DIR/sel.sql" "postgresql://app@127.0.0.1:$W/app" 2>&1 || true)
    tps=$(echo "$bench" | awk '/^tps/ {print $3}')
    failed=$(echo "$bench" | awk '/number of failed transactions/ {print $5}')
    echo "| $variant | $rps | $p50 | $tps | http ${non2xx:-0}, wire ${failed:-?} |"
    kill "$SIDECAR"; wait "$SIDECAR" 2>/dev/null || true; SIDECAR=
done
