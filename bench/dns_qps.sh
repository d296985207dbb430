#!/usr/bin/env bash
# DNS queries per second: reachback-dns against dnsmasq, same zone, same
# load, same run. Both serve NAMES names (userN.<suffix> -> 127.77.x.y) on
# 127.0.0.1; dnsperf asks each for DURATION seconds (random existing names,
# type A) and one table is printed, with each server's CPU time, since on a
# small machine dnsperf itself may be what saturates.
#
# Our server gets its names through dns_server_session_up, the path the
# session event stream uses (bench/dns_zone_driver.c, compiled here against
# the build's libraries), so no broker is needed.
#
# usage: bench/dns_qps.sh [BUILD_DIR]   env: DURATION=10 NAMES=10000
#        CLIENTS=4 OUTSTANDING=200
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC/build}
DURATION=${DURATION:-10}
NAMES=${NAMES:-10000}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
for tool in dnsperf dnsmasq dig cc python3; do
    command -v $tool >/dev/null || { echo "dns_qps: $tool is not installed" >&2; exit 1; }
done
for lib in libdns_core.a lib/librb_lib.a proto/librb_proto.a; do
    [ -f "$BUILD/$lib" ] || { echo "dns_qps: $BUILD/$lib missing (build dns_core first)" >&2; exit 1; }
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

cc -O2 -D_GNU_SOURCE -std=c11 "$SRC/bench/dns_zone_driver.c" -I "$SRC/services/dns" \
    -I "$SRC/lib" -I "$BUILD/proto/gen" -o "$WORK/dns_zone_driver" "$BUILD/libdns_core.a" \
    "$BUILD/lib/librb_lib.a" "$BUILD/proto/librb_proto.a" \
    $(pkg-config --libs libzmq libprotobuf-c libmicrohttpd) -lssl -lcrypto -lpthread -lm

python3 - "$WORK" "$NAMES" <<'PY'
import random, sys
work, n = sys.argv[1], int(sys.argv[2])
random.seed(1)
with open(work + "/hosts", "w") as h:
    for i in range(n):
        ip = 0x7f4d0001 + i
        h.write("%d.%d.%d.%d user%d.vpn.lab\n" % (ip >> 24, ip >> 16 & 255, ip >> 8 & 255, ip & 255, i))
with open(work + "/queries", "w") as q:
    for _ in range(max(n, 10000)):
        q.write("user%d.vpn.lab A\n" % random.randrange(n))
PY

free_port() { python3 -c 'import socket
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_answer() {   # port: until user0 resolves, at most 10 s
    for _ in $(seq 100); do
        [ -n "$(dig @127.0.0.1 -p "$1" user0.vpn.lab +short +time=1 +tries=1 2>/dev/null)" ] && return 0
        sleep 0.1
    done
    echo "dns_qps: nothing answers on port $1" >&2
    exit 1
}

OUR_PORT=$(free_port)
"$WORK/dns_zone_driver" "$OUR_PORT" "$NAMES" >"$WORK/driver.out" &
OUR_PID=$!
PIDS+=("$OUR_PID")

DM_PORT=$(free_port)
dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --addn-hosts="$WORK/hosts" --port="$DM_PORT" --listen-address=127.0.0.1 --bind-interfaces \
    --cache-size=10000 --local=/vpn.lab/ --pid-file="$WORK/dnsmasq.pid" \
    $( [ "$(id -u)" = 0 ] && echo --user=root ) 2>"$WORK/dnsmasq.err" &
DM_PID=$!
PIDS+=("$DM_PID")

wait_answer "$OUR_PORT"
wait_answer "$DM_PORT"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() {   # name port pid
    local t0 t1 out qps lost lat
    t0=$(cpu_ticks "$3")
    out=$(dnsperf -s 127.0.0.1 -p "$2" -d "$WORK/queries" -l "$DURATION" -c "$CLIENTS" \
        -q "$OUTSTANDING" 2>&1)
    t1=$(cpu_ticks "$3")
    qps=$(awk '/Queries per second/ {printf "%.0f", $4}' <<<"$out")
    lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
    lat=$(awk '/Average Latency/ {printf "%.0f", $4 * 1e6}' <<<"$out")
    printf "%-16s %12s %10s %14s %16s\n" "$1" "$qps" "$lost" "$lat" \
        "$(awk -v t=$((t1 - t0)) -v d="$DURATION" -v hz="$(getconf CLK_TCK)" \
            'BEGIN {printf "%.0f%%", 100 * t / hz / d}')"
}

echo "DNS: $NAMES names, dnsperf -l $DURATION -c $CLIENTS -q $OUTSTANDING, UDP, type A, all names exist"
printf "%-16s %12s %10s %14s %16s\n" server "queries/s" lost "avg lat (us)" "server CPU"
run reachback-dns "$OUR_PORT" "$OUR_PID"
run dnsmasq "$DM_PORT" "$DM_PID"
