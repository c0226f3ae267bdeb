#!/usr/bin/env bash
# Idempotency keys: the cost on writes, and what Redis saves on replays. One run, one sandbox:
#
#   benches/idempotency.sh [seconds]      (default 15 s per throughput measurement)
#
# Starts a two-region `homeport dev` sandbox (release build) whose cross-region links add 25 ms
# each way (a 50 ms round trip), and measures:
#   1. throughput: wrk -c 8 INSERTs through the us sidecar for a user homed in us, without a key
#      and with a fresh Idempotency-Key on every request (ratio keyed / plain);
#   2. replay latency through the us sidecar for keys of a user homed in eu: the first replay of
#      each key misses us's Redis and is answered by the eu primary across the 50 ms link, the
#      second is answered by us's Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
BASE_PORT=${BENCH_BASE_PORT:-7800}
DIR=$(mktemp -d /tmp/homeport-bench.XXXXXX)
chmod 755 "$DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v wrk >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

# HOMEPORT_BIN runs another build (e.g. a release build of an older commit) instead.
if [ -z "${HOMEPORT_BIN:-}" ]; then
    cargo build --release --quiet
    HOMEPORT_BIN=./target/release/homeport
fi
"$HOMEPORT_BIN" dev --dir "$DIR/sandbox" --base-port "$BASE_PORT" --link-delay 25ms >"$DIR/dev.log" 2>&1 &
DEV_PID=$!
cleanup() { kill -INT "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 600); do [ -f "$DIR/sandbox/endpoints.json" ] && break; sleep 0.1; done
[ -f "$DIR/sandbox/endpoints.json" ] || { cat "$DIR/dev.log"; exit 1; }

json() { python3 -c "import json,sys; e=json.load(open('$DIR/sandbox/endpoints.json')); print($1)"; }
EU_HTTP=$(json "e['regions'][0]['http']")
US_HTTP=$(json "e['regions'][1]['http']")
curl -sf -X PUT "$US_HTTP/v1/users/bench-writer/home" -H 'content-type: application/json' -d '{"home_region":"us"}' >/dev/null
curl -sf -X PUT "$EU_HTTP/v1/users/bench-replayer/home" -H 'content-type: application/json' -d '{"home_region":"eu"}' >/dev/null
sleep 1

SIDECAR_PID=$(pgrep -f "serve --config $DIR/sandbox/us/homeport.toml")
# CPU ticks of the us sidecar, and of every PostgreSQL process of the sandbox (benches/pg_ticks.py).
sidecar_ticks() { awk '{print $14 + $15}' "/proc/$SIDECAR_PID/stat"; }
pg_ticks() { python3 benches/pg_ticks.py "$DIR/sandbox"; }
measure() { # $1 = keyed (0/1), $2 = seconds, $3 = output file; appends "sidecar_us pg_us" per request to $3.cpu
    local s0 p0
    s0=$(sidecar_ticks); p0=$(pg_ticks)
    BENCH_KEYED=$1 BENCH_RUN=$RANDOM$RANDOM wrk -t 2 -c 8 -d "${2}s" --latency -s benches/keyed_write.lua "$US_HTTP" >"$3"
    if grep -q "Non-2xx" "$3"; then grep "Non-2xx" "$3"; echo "sidecar answered errors"; exit 1; fi
    local n; n=$(awk '/requests in/ {print $1}' "$3")
    python3 -c "t=$(getconf CLK_TCK); print(f'{($(sidecar_ticks)-$s0)*1e6/t/$n:.0f} {($(pg_ticks)-$p0)*1e6/t/$n:.0f}')" >"$3.cpu"
}
measure 0 3 "$DIR/warm.txt"; measure 1 3 "$DIR/warm.txt"   # warm up both paths (and create the schema)
measure 0 "$SECS" "$DIR/plain.txt"
measure 1 "$SECS" "$DIR/keyed.txt"
measure 0 "$SECS" "$DIR/plain2.txt"
rps() { awk '/^Requests\/sec/ {print $2}' "$1"; }
p50() { awk '/^ +50%/ {print $2}' "$1"; }
plain=$(python3 -c "print(($(rps "$DIR/plain.txt") + $(rps "$DIR/plain2.txt")) / 2)")
keyed=$(rps "$DIR/keyed.txt")

python3 - "$EU_HTTP" "$US_HTTP" <<'PY' >"$DIR/replay.txt"
import http.client, json, statistics, sys, time, urllib.parse
eu, us = (urllib.parse.urlparse(u) for u in sys.argv[1:3])
def conn(u): return http.client.HTTPConnection(u.hostname, u.port, timeout=10)
def post(c, key):
    body = json.dumps({"sql": "INSERT INTO notes (user_id, body) VALUES ('bench-replayer', $1) RETURNING id",
                       "params": [key]})
    t = time.perf_counter()
    c.request("POST", "/v1/query", body, {"content-type": "application/json",
              "homeport-user": "bench-replayer", "idempotency-key": key})
    r = c.getresponse(); r.read()
    return (time.perf_counter() - t) * 1000, r.status, r.getheader("idempotent-replayed"), r.getheader("homeport-served-by")
N = 200
run = str(time.time_ns())
ce, cu = conn(eu), conn(us)
for i in range(N):
    _, status, _, _ = post(ce, f"{run}-{i}")
    assert status == 200
first, second = [], []
for i in range(N):
    ms, status, replayed, served = post(cu, f"{run}-{i}")
    assert (status, replayed, served) == (200, "true", "eu/primary"), (status, replayed, served)
    first.append(ms)
    ms, status, replayed, served = post(cu, f"{run}-{i}")
    assert (status, replayed, served) == (200, "true", "us/cache"), (status, replayed, served)
    second.append(ms)
q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))]
print(f"{q(first, .5):.2f} {q(first, .99):.2f} {q(second, .5):.2f} {q(second, .99):.2f}")
PY
read -r pg50 pg99 r50 r99 <"$DIR/replay.txt"

echo "idempotency keys, wrk -t 2 -c 8, ${SECS}s per run, user homed in the sidecar's region"
cpu() { read -r s p <"$1.cpu"; echo "CPU/request: sidecar ${s} µs, PostgreSQL ${p} µs"; }
printf "%-52s %10s   p50 %-8s %s\n" "plain INSERT (req/s, mean of the runs before/after)" "$plain" "$(p50 "$DIR/plain.txt")" "$(cpu "$DIR/plain.txt")"
printf "%-52s %10s   p50 %-8s %s\n" "INSERT with a fresh Idempotency-Key (req/s)" "$keyed" "$(p50 "$DIR/keyed.txt")" "$(cpu "$DIR/keyed.txt")"
printf "%-52s %10s\n" "ratio keyed / plain" "$(python3 -c "print(f'{$keyed/$plain:.2f}')")"
echo "replays through the us sidecar of keys homed in eu (50 ms link), 200 keys"
printf "%-52s p50 %6s ms  p99 %6s ms\n" "from the eu primary (us Redis miss)" "$pg50" "$pg99"
printf "%-52s p50 %6s ms  p99 %6s ms\n" "from us Redis (no cross-region round trip)" "$r50" "$r99"
