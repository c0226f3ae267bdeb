#!/usr/bin/env bash
# What read-your-writes (consistency tokens) costs over the HTTP API, in one run.
#
#   benches/ryw_tokens.sh [seconds]      (default 15 s per wrk measurement)
#
# 1. Caught-up replica (`homeport dev --replica-delay 0ms`): a user homed in eu reads through the
#    us sidecar, so reads go to the local replica of the eu shard. A real token comes from a write
#    through that sidecar; once the replica has replayed it, wrk (-t 2 -c 8) runs point selects
#    on pgbench_accounts without and with `Consistency-Token`, in the order plain, token, token,
#    plain (so drift on a shared machine hits both alike). Reported: p50/p99 and req/s of each,
#    the extra p50 of token reads (target <= 0.1 ms) and the share of token reads the local replica
#    served (target >= 99%), from the us sidecar's /metrics before and after.
# 2. Lagging replica (a second sandbox with `--replica-delay 200ms`): a closed loop of write-then-
#    read-with-token pairs (Python threads, INSERT a unique note, then count it with the token,
#    expecting 1). Reported: how the token reads were served (local replica, other replica,
#    primary, and the fallback reasons) from the sidecar's metric deltas, the mean time a token
#    read took before a copy could serve it, and the reads that missed their write (must be 0).
#    A short control without tokens shows how stale the same reads are without them.
#
# Environment: BENCH_BASE_PORT (default 7700; the second sandbox uses +20), RYW_PAIRS (1000),
# RYW_THREADS (4), RYW_MAX_SECS (30), RYW_DELAY (200ms), RYW_CONTROL_PAIRS (200).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
BASE_PORT=${BENCH_BASE_PORT:-7700}
PAIRS=${RYW_PAIRS:-1000}
THREADS=${RYW_THREADS:-4}
MAX_SECS=${RYW_MAX_SECS:-30}
DELAY=${RYW_DELAY:-200ms}
CONTROL_PAIRS=${RYW_CONTROL_PAIRS:-200}
DIR=$(mktemp -d /tmp/homeport-rywbench.XXXXXX)
chmod 755 "$DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v wrk >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

# ---------------------------------------------------------------------------------------------
# Helpers: the wrk script (the point select of point_select.lua, plus the token header when
# BENCH_TOKEN is set, so both modes run the very same script) and a Python helper for metrics,
# wrk output and the write-then-read workload.
cat >"$DIR/select.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Homeport-User"] = "bench-user"
local token = os.getenv("BENCH_TOKEN") or ""
if token ~= "" then wrk.headers["Consistency-Token"] = token end
local rows = tonumber(os.getenv("BENCH_ROWS") or "500000")
local requests = {}
local n = 0
init = function(args)
  math.randomseed(os.time() + tostring({}):len())
  for i = 1, 4096 do
    local aid = math.random(1, rows)
    requests[i] = wrk.format(nil, "/v1/query", nil,
      '{"sql":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":[' .. aid .. ']}')
  end
end
request = function()
  n = n + 1
  return requests[(n % 4096) + 1]
end
EOF

cat >"$DIR/helper.py" <<'EOF'
import http.client, json, re, sys, threading, time
from urllib.parse import urlparse

def parse_metrics(path):
    out = {}
    for line in open(path):
        if not line.strip() or line.startswith('#'):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)', line)
        if not m:
            continue
        name, labels, value = m.groups()
        labs = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or '')))
        out[(name, labs)] = float(value)
    return out

def total(d, name, **want):
    return sum(v for (n, labs), v in d.items()
               if n == name and all(dict(labs).get(k) == w for k, w in want.items()))

def bucket(d, name, le):
    return sum(v for (n, labs), v in d.items()
               if n == name and 'le' in dict(labs) and dict(labs)['le'] != '+Inf'
               and abs(float(dict(labs)['le']) - le) < 1e-12)

def cmd_reads(before, after):
    """Metric deltas between two /metrics snapshots of one sidecar, as shell assignments."""
    b, a = parse_metrics(before), parse_metrics(after)
    d = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in set(a) | set(b)}
    r = dict(frontend='http', intent='read')
    v = {
        'READS': total(d, 'homeport_requests_total', **r),
        'READS_OK': total(d, 'homeport_requests_total', outcome='ok', **r),
        'LOCAL': total(d, 'homeport_requests_total', target='local_replica', **r),
        'REMOTE': total(d, 'homeport_requests_total', target='remote_replica', **r),
        'PRIMARY': total(d, 'homeport_requests_total', target='primary', **r),
        'NONE': total(d, 'homeport_requests_total', target='none', **r),
        'RYW_COUNT': total(d, 'homeport_ryw_wait_seconds_count'),
        'RYW_SUM': total(d, 'homeport_ryw_wait_seconds_sum'),
        'RYW_LE_5MS': bucket(d, 'homeport_ryw_wait_seconds_bucket', 0.005),
        'RYW_LE_50MS': bucket(d, 'homeport_ryw_wait_seconds_bucket', 0.05),
        'RYW_LE_100MS': bucket(d, 'homeport_ryw_wait_seconds_bucket', 0.1),
    }
    # One count per read that left its nearest copy: why (reason) and where it ran (target).
    v['FB'] = total(d, 'homeport_ryw_fallbacks_total')
    for reason in ('timeout', 'lagging', 'history', 'unavailable'):
        v['FB_' + reason.upper()] = total(d, 'homeport_ryw_fallbacks_total', reason=reason)
    for target in ('replica', 'primary', 'none'):
        v['FB_TO_' + target.upper()] = total(d, 'homeport_ryw_fallbacks_total', target=target)
    for k, x in v.items():
        print(f'{k}={x:.6f}' if k == 'RYW_SUM' else f'{k}={int(round(x))}')

def ms(s):
    m = re.match(r'([\d.]+)(us|ms|s|m)$', s)
    x, unit = float(m.group(1)), m.group(2)
    return x * {'us': 1e-3, 'ms': 1.0, 's': 1e3, 'm': 6e4}[unit]

def cmd_wrk(path):
    text = open(path).read()
    p50 = ms(re.search(r'^\s+50%\s+(\S+)', text, re.M).group(1))
    p99 = ms(re.search(r'^\s+99%\s+(\S+)', text, re.M).group(1))
    rps = float(re.search(r'^Requests/sec:\s+(\S+)', text, re.M).group(1))
    non2xx = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', text)
    sock = re.search(r'Socket errors:.*', text)
    errs = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errs += sum(int(x) for x in re.findall(r'\d+', sock.group(0)))
    print(f'P50={p50:.3f} P99={p99:.3f} RPS={rps:.0f} ERRS={errs}')

def pct(xs, q):
    if not xs:
        return float('nan')
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]

def cmd_pairs(url, user, pairs, threads, max_secs, with_token, tag):
    """Closed loop: INSERT a unique note, then at once count it (with the write's token)."""
    u = urlparse(url)
    pairs, threads, max_secs, with_token = int(pairs), int(threads), float(max_secs), with_token == '1'
    lock = threading.Lock()
    state = {'next': 0, 'mismatch': 0, 'errors': 0, 'served': {}, 'read_ms': {}, 'write_ms': [],
             'examples': []}
    deadline = time.monotonic() + max_secs

    def post(conn, body, headers):
        conn.request('POST', '/v1/query', body=json.dumps(body).encode(), headers=headers)
        r = conn.getresponse()
        data = r.read()
        return r.status, r.getheader('consistency-token'), r.getheader('homeport-served-by'), data

    def worker(t):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        base = {'content-type': 'application/json', 'homeport-user': user}
        while True:
            with lock:
                i = state['next']
                if i >= pairs or time.monotonic() >= deadline:
                    break
                state['next'] += 1
            body = f'ryw-{tag}-{t}-{i}-{time.time_ns()}'
            try:
                t0 = time.perf_counter()
                st, token, _, data = post(conn, {
                    'sql': 'INSERT INTO notes (user_id, body) VALUES ($1, $2)',
                    'params': [user, body]}, base)
                t1 = time.perf_counter()
                if st != 200 or (with_token and not token):
                    raise RuntimeError(f'write: {st} {data[:200]!r}')
                h = dict(base)
                if with_token:
                    h['consistency-token'] = token
                st, _, served, data = post(conn, {
                    'sql': 'SELECT count(*) FROM notes WHERE body = $1', 'params': [body]}, h)
                t2 = time.perf_counter()
                if st != 200:
                    raise RuntimeError(f'read: {st} {data[:200]!r}')
                n = json.loads(data)['rows'][0][0]
            except Exception as e:  # counted, and the connection is replaced
                with lock:
                    state['errors'] += 1
                    if len(state['examples']) < 3:
                        state['examples'].append(str(e))
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                continue
            with lock:
                if n != 1:
                    state['mismatch'] += 1
                state['served'][served] = state['served'].get(served, 0) + 1
                state['read_ms'].setdefault(served, []).append((t2 - t1) * 1e3)
                state['write_ms'].append((t1 - t0) * 1e3)
        conn.close()

    started = time.monotonic()
    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - started
    done = sum(state['served'].values())
    all_reads = [x for xs in state['read_ms'].values() for x in xs]
    print(f'DONE={done} ERRORS={state["errors"]} MISMATCH={state["mismatch"]} ELAPSED={elapsed:.1f}')
    print(f'PAIRS_PER_S={done / elapsed:.0f}')
    print(f'READ_P50={pct(all_reads, 0.5):.2f} READ_P99={pct(all_reads, 0.99):.2f}')
    print(f'WRITE_P50={pct(state["write_ms"], 0.5):.2f}')
    served = ', '.join(f'{k} {v} (mean read {sum(state["read_ms"][k]) / v:.1f} ms)'
                       for k, v in sorted(state['served'].items()))
    print(f"SERVED='{served}'")
    if state['examples']:
        print('EXAMPLES=' + repr(' | '.join(state['examples'])).replace('"', ''), file=sys.stderr)

if __name__ == '__main__':
    {'reads': cmd_reads, 'wrk': cmd_wrk, 'pairs': cmd_pairs}[sys.argv[1]](*sys.argv[2:])
EOF
helper() { python3 "$DIR/helper.py" "$@"; }
pct_of() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{100 * a / b:.2f}' if b else 'n/a')" "$1" "$2"; }

# ---------------------------------------------------------------------------------------------
# Sandboxes: one at a time (the machine is small); cleanup stops whichever is running.
cargo build --release --quiet
DEV_PID=
start_sandbox() { # name base_port replica_delay
    SB="$DIR/$1"
    ./target/release/homeport dev --dir "$SB" --base-port "$2" --regions eu,us --replica-delay "$3" \
        >"$DIR/$1.log" 2>&1 &
    DEV_PID=$!
    for _ in $(seq 1 600); do
        [ -f "$SB/endpoints.json" ] && break
        kill -0 "$DEV_PID" 2>/dev/null || break
        sleep 0.1
    done
    [ -f "$SB/endpoints.json" ] || { cat "$DIR/$1.log"; exit 1; }
    json() { python3 -c "import json; e=json.load(open('$SB/endpoints.json')); print($1)"; }
    port_of() { python3 -c "import sys; print(sys.argv[1].split(':')[2].split('/')[0])" "$1"; }
    EU_PRIMARY=$(port_of "$(json "e['regions'][0]['primary']")")
    REPLICA=$(port_of "$(json "e['regions'][0]['replicas']['us']")")
    US_HTTP=$(json "e['regions'][1]['http']")
    US_OPS=$(json "e['regions'][1]['ops']")
    SUPERUSER=$(json "e['superuser']")
}
stop_sandbox() {
    if [ -n "$DEV_PID" ]; then kill -INT "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true; fi
    DEV_PID=
}
cleanup() { stop_sandbox; rm -rf "$DIR"; }
trap cleanup EXIT

q() { # curl a query through the us sidecar: user sql-json [extra curl args...]; prints headers
    local user=$1 body=$2; shift 2
    curl -s -D - -o "$DIR/body.json" "$US_HTTP/v1/query" -H 'content-type: application/json' \
        -H "homeport-user: $user" "$@" -d "$body" | tr -d '\r'
}
header() { awk -F': ' -v h="$1" 'tolower($1)==h {print $2}'; }
psql_at() { "$PGBIN/psql" -X -qAt -h 127.0.0.1 -p "$1" -U "$SUPERUSER" app -c "$2"; }
metrics() { curl -sf "$US_OPS/metrics" >"$1"; }

# =============================================================================================
# Part 1: caught-up replica.
start_sandbox caught-up "$BASE_PORT" 0ms
ROWS=500000
"$PGBIN/pgbench" -i -q -s $((ROWS / 100000)) -h 127.0.0.1 -p "$EU_PRIMARY" -U app app >/dev/null 2>&1
curl -sf -X PUT "$US_HTTP/v1/users/bench-user/home" -H 'content-type: application/json' -d '{"home_region":"eu"}' >/dev/null
for _ in $(seq 1 200); do
    [ "$(psql_at "$REPLICA" "select count(*) from pg_class where relname='pgbench_accounts'")" = 1 ] && break
    sleep 0.1
done

# A real token: a write through the us sidecar (it crosses to the eu primary).
HDRS=$(q bench-user '{"sql":"UPDATE pgbench_accounts SET abalance = abalance WHERE aid = $1","params":[1]}')
TOKEN=$(header consistency-token <<<"$HDRS")
[ -n "$TOKEN" ] || { echo "the write returned no consistency-token:"; echo "$HDRS"; cat "$DIR/body.json"; exit 1; }
# Wait until the replica has replayed everything the primary had after the write, give the probes
# (every 100 ms in the sandbox) time to see it, then check a token read stays local.
LSN=$(psql_at "$EU_PRIMARY" "select pg_current_wal_lsn()")
for _ in $(seq 1 200); do
    [ "$(psql_at "$REPLICA" "select pg_last_wal_replay_lsn() >= '$LSN'")" = t ] && break
    sleep 0.05
done
sleep 0.5
SELECT1='{"sql":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":[1]}'
served=$(q bench-user "$SELECT1" -H "consistency-token: $TOKEN" | header homeport-served-by)
[ "$served" = "us/replica" ] || { echo "a token read was served by '$served', expected us/replica"; exit 1; }
served=$(q bench-user "$SELECT1" | header homeport-served-by)
[ "$served" = "us/replica" ] || { echo "a plain read was served by '$served', expected us/replica"; exit 1; }

# Warm both paths, then plain, token, token, plain.
BENCH_ROWS=$ROWS BENCH_TOKEN= wrk -t 2 -c 8 -d 3s -s "$DIR/select.lua" "$US_HTTP" >/dev/null
BENCH_ROWS=$ROWS BENCH_TOKEN=$TOKEN wrk -t 2 -c 8 -d 3s -s "$DIR/select.lua" "$US_HTTP" >/dev/null
pass() { # name token
    metrics "$DIR/$1.before"
    BENCH_ROWS=$ROWS BENCH_TOKEN=$2 wrk -t 2 -c 8 -d "${SECS}s" --latency -s "$DIR/select.lua" "$US_HTTP" >"$DIR/$1.wrk"
    metrics "$DIR/$1.after"
}
pass plain1 ""
pass token1 "$TOKEN"
pass token2 "$TOKEN"
pass plain2 ""
for p in plain1 token1 token2 plain2; do
    eval "$(helper wrk "$DIR/$p.wrk" | sed "s/\([A-Z0-9]*\)=/${p}_\1=/g")"
    eval "$(helper reads "$DIR/$p.before" "$DIR/$p.after" | sed "s/^/${p}_/")"
done
for p in plain1 token1 token2 plain2; do
    e="${p}_ERRS"; [ "${!e}" = 0 ] || { echo "$p: ${!e} error responses"; cat "$DIR/$p.wrk"; exit 1; }
done
avg() { python3 -c "import sys; print(f'{(float(sys.argv[1]) + float(sys.argv[2])) / 2:.3f}')" "$1" "$2"; }
PLAIN_P50=$(avg "$plain1_P50" "$plain2_P50"); TOKEN_P50=$(avg "$token1_P50" "$token2_P50")
PLAIN_P99=$(avg "$plain1_P99" "$plain2_P99"); TOKEN_P99=$(avg "$token1_P99" "$token2_P99")
PLAIN_RPS=$(avg "$plain1_RPS" "$plain2_RPS"); TOKEN_RPS=$(avg "$token1_RPS" "$token2_RPS")
EXTRA_P50=$(python3 -c "print(f'{$TOKEN_P50 - $PLAIN_P50:+.3f}')")
RPS_RATIO=$(python3 -c "print(f'{$TOKEN_RPS / $PLAIN_RPS:.3f}')")
TOK_READS=$((token1_READS + token2_READS)); TOK_LOCAL=$((token1_LOCAL + token2_LOCAL))
TOK_RYW=$((token1_RYW_COUNT + token2_RYW_COUNT))
TOK_FB=$((token1_FB + token2_FB))
PLN_READS=$((plain1_READS + plain2_READS)); PLN_LOCAL=$((plain1_LOCAL + plain2_LOCAL))
LOCAL_SHARE=$(pct_of "$TOK_LOCAL" "$TOK_READS")
stop_sandbox

# =============================================================================================
# Part 2: lagging replica, write-then-read pairs.
start_sandbox lagging $((BASE_PORT + 20)) "$DELAY"
curl -sf -X PUT "$US_HTTP/v1/users/ryw-user/home" -H 'content-type: application/json' -d '{"home_region":"eu"}' >/dev/null
for _ in $(seq 1 200); do # the notes table and the placement on the replica, the sidecar ready
    [ "$(psql_at "$REPLICA" "select count(*) from pg_class where relname='notes'")" = 1 ] && break
    sleep 0.1
done
sleep 1
helper pairs "$US_HTTP" ryw-user 40 2 10 1 warm >/dev/null  # warm pools and statement caches
sleep 0.5
metrics "$DIR/lag.before"
eval "$(helper pairs "$US_HTTP" ryw-user "$PAIRS" "$THREADS" "$MAX_SECS" 1 tok)"
metrics "$DIR/lag.after"
L_DONE=$DONE L_ERRORS=$ERRORS L_MISMATCH=$MISMATCH L_ELAPSED=$ELAPSED L_RATE=$PAIRS_PER_S
L_READ_P50=$READ_P50 L_READ_P99=$READ_P99 L_WRITE_P50=$WRITE_P50 L_SERVED=$SERVED
eval "$(helper reads "$DIR/lag.before" "$DIR/lag.after" | sed 's/^/lag_/')"
MEAN_WAIT=$(python3 -c "print(f'{1e3 * $lag_RYW_SUM / $lag_RYW_COUNT:.1f}' if $lag_RYW_COUNT else 'n/a')")
# Control: the same pairs without the token.
eval "$(helper pairs "$US_HTTP" ryw-user "$CONTROL_PAIRS" "$THREADS" "$MAX_SECS" 0 ctl)"
C_DONE=$DONE C_MISMATCH=$MISMATCH C_SERVED=$SERVED C_READ_P50=$READ_P50
stop_sandbox

# =============================================================================================
verdict() { python3 -c "import sys; print('met' if eval(sys.argv[1]) else 'NOT MET')" "$1"; }
echo
echo "== 1. caught-up replica: point select via the us sidecar, user homed in eu, wrk -t 2 -c 8, ${SECS}s per pass (plain, token, token, plain)"
printf "%-26s %10s %10s %10s\n" "" "p50 (ms)" "p99 (ms)" "req/s"
printf "%-26s %10s %10s %10s\n" "plain  (pass 1 / pass 2)" "$plain1_P50/$plain2_P50" "$plain1_P99/$plain2_P99" "$plain1_RPS/$plain2_RPS"
printf "%-26s %10s %10s %10s\n" "token  (pass 1 / pass 2)" "$token1_P50/$token2_P50" "$token1_P99/$token2_P99" "$token1_RPS/$token2_RPS"
printf "%-26s %10s %10s %10s\n" "plain  (mean)" "$PLAIN_P50" "$PLAIN_P99" "$PLAIN_RPS"
printf "%-26s %10s %10s %10s\n" "token  (mean)" "$TOKEN_P50" "$TOKEN_P99" "$TOKEN_RPS"
echo "extra p50 with token:     $EXTRA_P50 ms   (target <= 0.1 ms: $(verdict "$EXTRA_P50 <= 0.1"))"
echo "req/s token / plain:      $RPS_RATIO"
echo "token reads on the local replica: $TOK_LOCAL of $TOK_READS = $LOCAL_SHARE%   (target >= 99%: $(verdict "$TOK_READS > 0 and $TOK_LOCAL / $TOK_READS >= 0.99"))"
echo "  token reads through the read-your-writes path: $TOK_RYW; fallbacks: $TOK_FB; plain reads local: $PLN_LOCAL of $PLN_READS"
echo
echo "== 2. replica delay $DELAY, consistency.max_wait 50ms: $THREADS threads, write (INSERT note) then read it at once with the token"
echo "pairs: $L_DONE in ${L_ELAPSED}s ($L_RATE pairs/s), errors $L_ERRORS"
echo "reads that missed their own write: $L_MISMATCH   (must be 0: $(verdict "$L_MISMATCH == 0 and $L_DONE > 0"))"
echo "token reads (metrics): $lag_READS; local replica $lag_LOCAL ($(pct_of "$lag_LOCAL" "$lag_READS")%), other replica $lag_REMOTE, primary $lag_PRIMARY ($(pct_of "$lag_PRIMARY" "$lag_READS")%), none $lag_NONE"
echo "fallbacks: $lag_FB reads (reason timeout $lag_FB_TIMEOUT, lagging $lag_FB_LAGGING, history $lag_FB_HISTORY, unavailable $lag_FB_UNAVAILABLE; ran on replica $lag_FB_TO_REPLICA, primary $lag_FB_TO_PRIMARY, none $lag_FB_TO_NONE)"
echo "homeport_ryw_wait_seconds: count $lag_RYW_COUNT, mean $MEAN_WAIT ms; <=5ms $lag_RYW_LE_5MS, <=50ms $lag_RYW_LE_50MS, <=100ms $lag_RYW_LE_100MS"
echo "client view: served by $L_SERVED; read p50 $L_READ_P50 ms p99 $L_READ_P99 ms; write p50 $L_WRITE_P50 ms"
echo "control without token: $C_MISMATCH of $C_DONE reads missed their write (served by $C_SERVED; read p50 $C_READ_P50 ms)"
