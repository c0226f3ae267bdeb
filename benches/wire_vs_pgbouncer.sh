#!/usr/bin/env bash
# pgbench straight to PostgreSQL, through PgBouncer (transaction pooling) and through homeport's
# wire endpoint, in one run on the same data, plus homeport's memory idle and with 1,000 idle
# client connections.
#
#   benches/wire_vs_pgbouncer.sh [seconds]     (default 15 s per measurement)
#
# Reads (-S) go to the replica of the eu shard located in us: directly, through a PgBouncer in
# front of that replica, and through the us sidecar for a user homed in eu (which routes them to
# that same replica). TPC-B goes to the eu primary: directly, through a PgBouncer in front of it,
# and through the eu sidecar. Every figure is also printed as a ratio to direct.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
BASE_PORT=${BENCH_BASE_PORT:-7650}
DIR=$(mktemp -d /tmp/homeport-wirebench.XXXXXX)
chmod 755 "$DIR"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v pgbouncer >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
ulimit -n 65536 2>/dev/null || true

cargo build --release --quiet
./target/release/homeport dev --dir "$DIR/sandbox" --base-port "$BASE_PORT" >"$DIR/dev.log" 2>&1 &
DEV_PID=$!
BOUNCERS=()
cleanup() {
    for b in "${BOUNCERS[@]}"; do kill "$b" 2>/dev/null || true; done
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
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$d"; runuser -u postgres -- pgbouncer "$d/pgbouncer.ini" >/dev/null 2>&1 &
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
sleep 1

export PGOPTIONS="-c homeport.user=bench-user"
run() { # label port args...
    local label=$1 port=$2; shift 2
    local out
    out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U app "$@" -T "$SECS" app 2>&1 || true)
    local tps
    tps=$(echo "$out" | awk '/^tps/ {print $3; exit}')
    echo "${tps:-failed}"
}
declare -A R
for mode in S S_prepared TPCB C; do
    case $mode in
        S) args=(-S -c 8 -j 2); rp=$EU_REPLICA_IN_US; bp=$BOUNCER_READ; hp=$US_WIRE ;;
        S_prepared) args=(-S -M prepared -c 8 -j 2); rp=$EU_REPLICA_IN_US; bp=$BOUNCER_READ; hp=$US_WIRE ;;
        TPCB) args=(-n -c 8 -j 2); rp=$EU_PRIMARY; bp=$BOUNCER_WRITE; hp=$EU_WIRE ;;
        C) args=(-S -C -c 8 -j 2); rp=$EU_REPLICA_IN_US; bp=$BOUNCER_READ; hp=$US_WIRE ;;
    esac
    R[$mode,direct]=$(PGOPTIONS= run direct "$rp" "${args[@]}")
    R[$mode,bouncer]=$(PGOPTIONS= run pgbouncer "$bp" "${args[@]}")
    R[$mode,homeport]=$(run homeport "$hp" "${args[@]}")
done

ratio() { python3 -c "
import sys
a, b = sys.argv[1], sys.argv[2]
try: print(f'{float(a)/float(b):.2f}')
except ValueError: print('-')" "$1" "$2"; }
printf "%-28s %12s %12s %12s %10s %10s\n" "pgbench, ${SECS}s, 8 clients" "direct tps" "pgbouncer" "homeport" "bouncer/d" "homeport/d"
for mode in S S_prepared TPCB C; do
    case $mode in S) name="-S (simple)";; S_prepared) name="-S -M prepared";; TPCB) name="TPC-B (simple)";; C) name="-S -C (connect per txn)";; esac
    printf "%-28s %12s %12s %12s %10s %10s\n" "$name" "${R[$mode,direct]}" "${R[$mode,bouncer]}" "${R[$mode,homeport]}" \
        "$(ratio "${R[$mode,bouncer]}" "${R[$mode,direct]}")" "$(ratio "${R[$mode,homeport]}" "${R[$mode,direct]}")"
done

# Memory of the us sidecar: idle, then holding 1,000 idle client connections.
SIDECAR=$(pgrep -f "homeport serve --config $DIR/sandbox/us/homeport.toml")
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$SIDECAR/status"; }
sleep 2
IDLE=$(rss)
python3 - "$US_WIRE" <<'EOF' &
import socket, struct, sys, time
port = int(sys.argv[1])
conns = []
params = b"user\0app\0database\0app\0options\0-c homeport.user=bench-user\0\0"
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    buf = b""
    while not buf.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("connection refused")
        buf += chunk
    conns.append(s)
print("1000 connected", flush=True)
time.sleep(8)
EOF
HOLDER=$!
sleep 6
HELD=$(rss)
wait $HOLDER || true
printf "%-40s %8s MiB\n" "homeport RSS idle" "$IDLE" "homeport RSS with 1,000 idle clients" "$HELD"
