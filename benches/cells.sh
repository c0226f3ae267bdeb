#!/usr/bin/env bash
# Cells: write throughput with one and two shards (cells) in one region, and the cost of the
# directory's shard field on the hot path.
#
#   benches/cells.sh [seconds]                       (default 15 s per measurement)
#   BASELINE=/path/to/homeport benches/cells.sh      (also run a build from before cells)
#   HOMEPORT_BIN=/path/to/homeport benches/cells.sh  (that build instead of a fresh release build)
#
# For N = 1 and 2: a one-region sandbox `homeport dev --regions eu --shards-per-region N`
# (release build), 64 users placed with {"home_region": "eu"} (spread over the cells by
# rendezvous hashing), then wrk -t 2 -c 16 INSERTs through the eu sidecar, each request as the
# next user (benches/cells_write.lua). With BASELINE, the N = 1 run is repeated with that binary
# (no --shards-per-region flag): same workload, so the ratio is what the shard field costs on
# the hot path (directory answers come from the in-process cache there, as in production).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
BASE_PORT=${BENCH_BASE_PORT:-7850}
USERS=64
DIR=$(mktemp -d /tmp/homeport-cells-bench.XXXXXX)
chmod 755 "$DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v wrk >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
if [ -z "${HOMEPORT_BIN:-}" ]; then cargo build --release --quiet; fi
BIN=${HOMEPORT_BIN:-./target/release/homeport}

DEV_PID=
stop_dev() { [ -n "$DEV_PID" ] && { kill -INT "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true; }; DEV_PID=; }
trap 'stop_dev; rm -rf "$DIR"' EXIT

# run NAME BINARY [dev flags...]: prints requests/s and the users per shard.
run() {
    local name=$1 bin=$2; shift 2
    "$bin" dev --dir "$DIR/$name" --regions eu --base-port "$BASE_PORT" "$@" >"$DIR/$name.log" 2>&1 &
    DEV_PID=$!
    for _ in $(seq 1 900); do [ -f "$DIR/$name/endpoints.json" ] && break; sleep 0.1; done
    [ -f "$DIR/$name/endpoints.json" ] || { cat "$DIR/$name.log"; exit 1; }
    local http
    http=$(python3 -c "import json; print(json.load(open('$DIR/$name/endpoints.json'))['regions'][0]['http'])")
    local spread=""
    for i in $(seq 0 $((USERS - 1))); do
        shard=$(curl -sf -X PUT "$http/v1/users/cell-bench-$i/home" -H 'content-type: application/json' \
            -d '{"home_region":"eu"}' | python3 -c "import json,sys; print(json.load(sys.stdin).get('shard','eu'))")
        spread="$spread $shard"
    done
    BENCH_USERS=$USERS wrk -t 2 -c 16 -d 3s -s benches/cells_write.lua "$http" >/dev/null
    BENCH_USERS=$USERS wrk -t 2 -c 16 -d "${SECS}s" --latency -s benches/cells_write.lua "$http" >"$DIR/$name.txt"
    if grep -q "Non-2xx" "$DIR/$name.txt"; then grep "Non-2xx" "$DIR/$name.txt"; exit 1; fi
    local rps p50
    rps=$(awk '/^Requests\/sec/ {print $2}' "$DIR/$name.txt")
    p50=$(awk '/^ +50%/ {print $2}' "$DIR/$name.txt")
    echo "$name: $rps writes/s, p50 $p50, users per shard:$(echo "$spread" | tr ' ' '\n' | sort | uniq -c | awk 'NF == 2 {printf " %s=%s", $2, $1}')"
    stop_dev
}

run one-cell "$BIN" --shards-per-region 1
run two-cells "$BIN" --shards-per-region 2
if [ -n "${BASELINE:-}" ]; then
    run baseline "$BASELINE"
    run one-cell-again "$BIN" --shards-per-region 1
fi
echo "($(nproc) cores, wrk -t 2 -c 16, ${SECS}s per run; sidecar, servers and wrk share them)"
