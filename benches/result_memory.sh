#!/usr/bin/env bash
# Peak RSS of a sidecar next to the size of the results it serves over HTTP.
#
#   benches/result_memory.sh [rows ...]          (default: 10000 100000 1000000 3000000)
#
# Starts a one-region `homeport dev` sandbox (release build, or the binary in $HOMEPORT_BIN) and,
# for each row count, sends `SELECT g, md5(g::text) FROM generate_series(1, N) g` from 1 client
# and then from 20 clients at once, to /v1/query (a read: streamed) and to /v1/transaction (a
# collected result). Environment variables such as MIMALLOC_PURGE_DELAY reach the sidecar. Before each run the sidecar's peak RSS
# (VmHWM) is reset through /proc/PID/clear_refs; after it the script prints the peak, the RSS
# two seconds later (memory given back to the OS), the HTTP statuses and the bytes received.
# The JSON of one row is about 45 bytes, so 3,000,000 rows are about 135 MB of JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(10000 100000 1000000 3000000)
BASE_PORT=${BENCH_BASE_PORT:-7700}
DIR=$(mktemp -d /tmp/homeport-rss.XXXXXX)
chmod 755 "$DIR"

if [ -z "${HOMEPORT_BIN:-}" ]; then
    cargo build --release --quiet
    HOMEPORT_BIN=./target/release/homeport
fi
"$HOMEPORT_BIN" dev --dir "$DIR/sandbox" --regions us --base-port "$BASE_PORT" >"$DIR/dev.log" 2>&1 &
DEV_PID=$!
cleanup() { kill -INT "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 600); do [ -f "$DIR/sandbox/endpoints.json" ] && break; sleep 0.1; done
[ -f "$DIR/sandbox/endpoints.json" ] || { cat "$DIR/dev.log"; exit 1; }
US_HTTP=$(python3 -c "import json; print(json.load(open('$DIR/sandbox/endpoints.json'))['regions'][0]['http'])")
curl -sf -X PUT "$US_HTTP/v1/users/rss-user/home" -H 'content-type: application/json' -d '{"home_region":"us"}' >/dev/null
PID=$(pgrep -f "serve --config $DIR/sandbox/us/homeport.toml")

kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PID/status"; }
mib() { python3 -c "print(f'{$1/1024:.1f}')"; }

one() { # path rows -> "status bytes"
    local sql="{\"sql\":\"SELECT g, md5(g::text) FROM generate_series(1, $2) g\"}"
    [ "$1" = query ] || sql="{\"statements\":[$sql]}"
    curl -s -o /dev/null -w '%{http_code} %{size_download}\n' "$US_HTTP/v1/$1" \
        -H 'content-type: application/json' -H 'homeport-user: rss-user' -d "$sql"
}

echo "sidecar $(mib "$(kib VmRSS)") MiB RSS at start; result limits and budget as configured by homeport dev"
printf "%-12s %10s %8s %14s %14s %16s  %s\n" path rows clients "peak RSS MiB" "RSS +2s MiB" "bytes/response" "statuses"
for path in query transaction; do
for rows in "${SIZES[@]}"; do
    for clients in 1 20; do
        echo 5 >"/proc/$PID/clear_refs"
        for _ in $(seq 1 "$clients"); do one "$path" "$rows" & done >"$DIR/out.txt"
        wait $(jobs -p | grep -v "^$DEV_PID$") 2>/dev/null || true
        peak=$(kib VmHWM)
        sleep 2
        after=$(kib VmRSS)
        statuses=$(awk '{print $1}' "$DIR/out.txt" | sort | uniq -c | awk '{printf "%s×%s ", $1, $2}')
        bytes=$(awk '{print $2}' "$DIR/out.txt" | sort -n | tail -1)
        printf "%-12s %10s %8s %14s %14s %16s  %s\n" "$path" "$rows" "$clients" "$(mib "$peak")" "$(mib "$after")" "$bytes" "$statuses"
    done
done
done
