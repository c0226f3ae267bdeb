#!/usr/bin/env bash
# pgbench straight to PostgreSQL, through PgBouncer (transaction pooling) and through homeport's
# wire endpoint, in one run on the same data, with each proxy's CPU per transaction
# (/proc/PID/stat deltas over the runs), and first the memory of PgBouncer and homeport holding
# 1,000 idle asyncpg clients that each ran one SELECT 1.
#
#   benches/wire_vs_pgbouncer.sh [seconds]     (default 5 s per run, ROUNDS=3 runs per figure)
#   HOMEPORT_BIN=target/profiling/homeport benches/wire_vs_pgbouncer.sh 15   (no cargo build)
#   PERF_OUT=/tmp/hp.perf PERF_ARGS="-g --call-graph dwarf" ...  (perf record of homeport's -S run;
#   PERF_MODE=C|TPCB|S_prepared records that run instead)
#   MODES="S C" ...  (only those runs)
#
# Reads (-S) go to the replica of the eu shard located in us: directly, through a PgBouncer in
# front of that replica, and through the us sidecar for a user homed in eu (which routes them to
# that same replica). TPC-B goes to the eu primary: directly, through a PgBouncer in front of it,
# and through the eu sidecar. Every figure is also printed as a ratio to direct, and homeport's
# as a ratio to PgBouncer.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BENCH_BASE_PORT:-7650}
DIR=$(mktemp -d /tmp/homeport-wirebench.XXXXXX)
chmod 755 "$DIR"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v pgbouncer >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PY=${PYTHON:-target/pyenv/bin/python}
"$PY" -c "import asyncpg" 2>/dev/null || { echo "needs asyncpg in $PY (scripts/test.sh sets up target/pyenv)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -z "${HOMEPORT_BIN:-}" ]; then
    cargo build --release --quiet
    HOMEPORT_BIN=./target/release/homeport
fi
"$HOMEPORT_BIN" dev --dir "$DIR/sandbox" --base-port "$BASE_PORT" >"$DIR/dev.log" 2>&1 &
DEV_PID=$!
BOUNCERS=()
cleanup() {
    for b in "${BOUNCERS[@]}"; do kill "$b" 2>/dev/null || true; done
    for p in ${BOUNCER_READ_PID:-} ${BOUNCER_WRITE_PID:-}; do kill "$p" 2>/dev/null || true; done
    kill -INT "$DEV_PID" 2>/dev/null || true; wait "$DEV_PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
for _ in $(seq 1 600); do [ -f "$DIR/sandbox/endpoints.json" ] && break; sleep 0.1; done
json() { python3 -c "import json; e=json.load(open('$DIR/sandbox/endpoints.json')); print($1)"; }
port_of() { python3 -c "import sys; print(sys.argv[1].split(':')[2].split('/')[0])" "$1"; }
EU_PRIMARY=$(port_of "$(json "e['regions'][0]['primary']")")
EU_REPLICA_IN_US=$(port_of "$(json "e['regions'][0]['replicas']['us']")")
EU_HTTP=$(json "e['regions'][0]['http']")
EU_WIRE=$((BASE_PORT + 1))
US_WIRE=$((BASE_PORT + 11))

"$PGBIN/pgbench" -i -q -s 5 -h 127.0.0.1 -p "$EU_PRIMARY" -U app app >/dev/null 2>&1
curl -sf -X PUT "$EU_HTTP/v1/users/bench-user/home" -H 'content-type: application/json' -d '{"home_region":"eu"}' >/dev/null
sleep 1

# PgBouncer 1.x refuses to run as root; its files go where the postgres user can read them.
bouncer() { # name target_port listen_port
    local d="$DIR/bouncer-$1"; mkdir -p "$d"
    printf '"app" ""\n' >"$d/users.txt"
    cat >"$d/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$2 dbname=app user=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $3
unix_socket_dir =
auth_type = trust
auth_file = $d/users.txt
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 20
logfile = $d/pgbouncer.log
pidfile = $d/pgbouncer.pid
EOF
    # runuser's PAM session resets the open-file limit to 1024: too few for 1,000 clients.
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$d"; runuser -u postgres -- bash -c "ulimit -n \$(ulimit -Hn); exec pgbouncer $d/pgbouncer.ini" >/dev/null 2>&1 &
    else pgbouncer "$d/pgbouncer.ini" >/dev/null 2>&1 & fi
    BOUNCERS+=($!)
}
read -r BOUNCER_READ BOUNCER_WRITE < <(python3 -c "
import socket
s=[socket.socket() for _ in range(2)]
[x.bind(('127.0.0.1',0)) for x in s]
print(*[x.getsockname()[1] for x in s])")
bouncer read "$EU_REPLICA_IN_US" "$BOUNCER_READ"
bouncer write "$EU_PRIMARY" "$BOUNCER_WRITE"
bouncer_pid() { pgrep -f -- "^pgbouncer $DIR/bouncer-$1/pgbouncer.ini"; }
for _ in $(seq 1 100); do bouncer_pid read >/dev/null && bouncer_pid write >/dev/null && break; sleep 0.1; done
sleep 1
BOUNCER_READ_PID=$(bouncer_pid read | head -1)
BOUNCER_WRITE_PID=$(bouncer_pid write | head -1)
EU_SIDECAR=$(pgrep -f "serve --config $DIR/sandbox/eu/homeport.toml")
US_SIDECAR=$(pgrep -f "serve --config $DIR/sandbox/us/homeport.toml")
HZ=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Memory: RSS of the read PgBouncer and of the us sidecar, before and while holding 1,000 idle
# asyncpg clients that each ran one SELECT 1 (simple protocol, which PgBouncer's transaction mode
# serves too), 50 connecting at a time.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
idle_clients() { # label pid port options
    local label=$1 pid=$2 port=$3 options=$4 before held ready="$DIR/ready-$1"
    sleep 2
    before=$(rss_kib "$pid")
    "$PY" - "$port" "$options" "$ready" 2>"$DIR/idle-$label.log" <<'EOF' &
import asyncio, sys
import asyncpg
port, options, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
async def one(gate):
    async with gate:
        c = await asyncpg.connect(host="127.0.0.1", port=port, user="app", database="app", ssl=False,
                                  server_settings={"options": options} if options else None)
        await c.execute("SELECT 1")
        return c
async def main():
    gate = asyncio.Semaphore(50)
    conns = await asyncio.gather(*(one(gate) for _ in range(1000)))
    open(ready, "w").close()
    await asyncio.sleep(6)
    for c in conns:
        await c.close()
asyncio.run(main())
EOF
    local holder=$!
    for _ in $(seq 1 900); do [ -f "$ready" ] && break; sleep 0.1; done
    sleep 2
    held=$(rss_kib "$pid")
    wait "$holder" || true
    if [ ! -f "$ready" ]; then
        printf "%-12s could not hold 1,000 clients: %s\n" "$label" "$(tail -1 "$DIR/idle-$label.log")"
        return
    fi
    python3 -c "
import sys
b, h = int(sys.argv[2]), int(sys.argv[3])
print(f'{sys.argv[1]:<12} {b/1024:9.1f} MiB {h/1024:9.1f} MiB {(h-b)/1000:9.1f} KiB')" "$label" "$before" "$held"
}
printf "%-12s %13s %13s %13s\n" "1,000 idle" "RSS before" "RSS holding" "per client"
idle_clients pgbouncer "$BOUNCER_READ_PID" "$BOUNCER_READ" ""
idle_clients homeport "$US_SIDECAR" "$US_WIRE" "-c homeport.user=bench-user"

export PGOPTIONS="-c homeport.user=bench-user"
# CPU ticks of every PostgreSQL process of the sandbox, replicas included (benches/pg_ticks.py).
pg_ticks() { python3 benches/pg_ticks.py "$DIR/sandbox"; }
run() { # proxy_pid port args... -> "transactions proxy_ticks postgres_ticks" (pid "-" for direct)
    local pid=$1 port=$2; shift 2
    local out before=0 after=0 txns pg_before pg_after
    [ "$pid" = - ] || before=$(ticks "$pid")
    pg_before=$(pg_ticks)
    out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U app "$@" -T "$SECS" app 2>&1 || true)
    pg_after=$(pg_ticks)
    [ "$pid" = - ] || after=$(ticks "$pid")
    txns=$(echo "$out" | awk -F': ' '/number of transactions actually processed/ {print $2; exit}')
    echo "${txns:-0} $((after - before)) $((pg_after - pg_before))"
}
# Each figure is the sum of ROUNDS runs of SECS seconds, the three targets taking turns, so
# that a noisy neighbour on the shared machine weighs on all three alike.
declare -A T C P
for mode in ${MODES:-S S_prepared TPCB C}; do
    case $mode in
        S) args=(-S -c 8 -j 2); rp=$EU_REPLICA_IN_US; bp=$BOUNCER_READ; bpid=$BOUNCER_READ_PID; hp=$US_WIRE; hpid=$US_SIDECAR ;;
        S_prepared) args=(-S -M prepared -c 8 -j 2); rp=$EU_REPLICA_IN_US; bp=$BOUNCER_READ; bpid=$BOUNCER_READ_PID; hp=$US_WIRE; hpid=$US_SIDECAR ;;
        TPCB) args=(-n -c 8 -j 2); rp=$EU_PRIMARY; bp=$BOUNCER_WRITE; bpid=$BOUNCER_WRITE_PID; hp=$EU_WIRE; hpid=$EU_SIDECAR ;;
        C) args=(-S -C -c 8 -j 2); rp=$EU_REPLICA_IN_US; bp=$BOUNCER_READ; bpid=$BOUNCER_READ_PID; hp=$US_WIRE; hpid=$US_SIDECAR ;;
    esac
    for target in direct bouncer homeport; do T[$mode,$target]=0; C[$mode,$target]=0; P[$mode,$target]=0; done
    for round in $(seq 1 "$ROUNDS"); do
        read -r t c p < <(PGOPTIONS= run - "$rp" "${args[@]}")
        T[$mode,direct]=$((T[$mode,direct] + t)); P[$mode,direct]=$((P[$mode,direct] + p))
        read -r t c p < <(PGOPTIONS= run "$bpid" "$bp" "${args[@]}")
        T[$mode,bouncer]=$((T[$mode,bouncer] + t)); C[$mode,bouncer]=$((C[$mode,bouncer] + c))
        P[$mode,bouncer]=$((P[$mode,bouncer] + p))
        PERF_PID=
        if [ -n "${PERF_OUT:-}" ] && [ "$mode" = "${PERF_MODE:-S}" ] && [ "$round" = 1 ]; then
            # shellcheck disable=SC2086
            perf record -F 999 ${PERF_ARGS:-} -p "$hpid" -o "$PERF_OUT" -- sleep "$SECS" >/dev/null 2>&1 &
            PERF_PID=$!
        fi
        read -r t c p < <(run "$hpid" "$hp" "${args[@]}")
        T[$mode,homeport]=$((T[$mode,homeport] + t)); C[$mode,homeport]=$((C[$mode,homeport] + c))
        P[$mode,homeport]=$((P[$mode,homeport] + p))
        [ -z "$PERF_PID" ] || wait "$PERF_PID" || true
    done
done

ratio() { python3 -c "
import sys
a, b = sys.argv[1], sys.argv[2]
try: print(f'{float(a)/float(b):.2f}')
except (ValueError, ZeroDivisionError): print('-')" "$1" "$2"; }
tps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]):.0f}')" "$1" "$((SECS * ROUNDS))"; }
cpu() { [ "$1" -gt 0 ] && echo $(( $2 * 1000000 / HZ / $1 )) || echo -; } # transactions ticks -> µs
row() { printf "%-24s %10s %10s %10s %9s %9s %9s %12s %12s\n" "$@"; }
echo
row "pgbench ${ROUNDS}x${SECS}s 8 clients" "direct tps" "pgbouncer" "homeport" "bncr/dir" "home/dir" "home/bncr" "bncr us/txn" "home us/txn"
for mode in ${MODES:-S S_prepared TPCB C}; do
    case $mode in S) name="-S (simple)";; S_prepared) name="-S -M prepared";; TPCB) name="TPC-B (simple)";; C) name="-S -C (connect/txn)";; esac
    row "$name" "$(tps "${T[$mode,direct]}")" "$(tps "${T[$mode,bouncer]}")" "$(tps "${T[$mode,homeport]}")" \
        "$(ratio "${T[$mode,bouncer]}" "${T[$mode,direct]}")" "$(ratio "${T[$mode,homeport]}" "${T[$mode,direct]}")" \
        "$(ratio "${T[$mode,homeport]}" "${T[$mode,bouncer]}")" \
        "$(cpu "${T[$mode,bouncer]}" "${C[$mode,bouncer]}")" "$(cpu "${T[$mode,homeport]}" "${C[$mode,homeport]}")"
done
# What each path costs the databases: the proxy's own statements (homeport's commit-position
# query behind writes, its probes) show here, not in the proxy's CPU. Probes and replay run all
# along, so a target with fewer transactions in the same time carries more of them per
# transaction.
echo
row "PostgreSQL CPU us/txn" "direct" "pgbouncer" "homeport" "" "" "home/bncr" "" ""
for mode in ${MODES:-S S_prepared TPCB C}; do
    case $mode in S) name="-S (simple)";; S_prepared) name="-S -M prepared";; TPCB) name="TPC-B (simple)";; C) name="-S -C (connect/txn)";; esac
    row "$name" "$(cpu "${T[$mode,direct]}" "${P[$mode,direct]}")" "$(cpu "${T[$mode,bouncer]}" "${P[$mode,bouncer]}")" \
        "$(cpu "${T[$mode,homeport]}" "${P[$mode,homeport]}")" "" "" \
        "$(ratio "$(cpu "${T[$mode,homeport]}" "${P[$mode,homeport]}")" "$(cpu "${T[$mode,bouncer]}" "${P[$mode,bouncer]}")")" "" ""
done

# SYSCALLS=1: system calls per -S transaction of each proxy (strace -c attached for a fixed
# number of transactions after the timed runs, so its slowdown touches no figure above).
if [ -n "${SYSCALLS:-}" ]; then
    command -v strace >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; }
    echo
    printf "%-12s %14s   %s\n" "-S, 8x250" "syscalls/txn" "the most frequent"
    for proxy in pgbouncer homeport; do
        if [ $proxy = pgbouncer ]; then pid=$BOUNCER_READ_PID; port=$BOUNCER_READ; opts=; else pid=$US_SIDECAR; port=$US_WIRE; opts=$PGOPTIONS; fi
        strace -c -f -p "$pid" -o "$DIR/strace-$proxy" 2>/dev/null &
        spid=$!
        sleep 1
        PGOPTIONS=$opts "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U app -S -c 8 -j 2 -t 250 app >/dev/null 2>&1 || true
        kill -INT "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true
        python3 - "$DIR/strace-$proxy" "$proxy" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip() and l.split()[0][0].isdigit()]
calls = {r[-1]: int(r[3]) for r in rows if len(r) >= 5 and r[3].isdigit() and r[-1] != "total"}
total = sum(calls.values())
top = sorted(calls.items(), key=lambda kv: -kv[1])[:4]
print(f"{sys.argv[2]:<12} {total / 2000:14.1f}   " + ", ".join(f"{k} {v / 2000:.1f}" for k, v in top))
PY
    done
fi
