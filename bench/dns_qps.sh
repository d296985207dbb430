#!/usr/bin/env bash
# DNS queries per second: reachback-dns against dnsmasq, same zone, same
# load, same run. Both serve NAMES names on 127.0.0.1; dnsperf asks each for
# DURATION seconds (random existing names, type A) and one table is printed,
# with each server's CPU time, since on a small machine dnsperf itself may be
# what saturates.
#
# Default: a real lab (scripts/lab) with NAMES users (hashed at ln=1) logged
# on and held by reachback-loadgen, so reachback-dns learned every name from
# the broker's event stream; dnsmasq serves the same names and addresses
# (the loadgen's --sessions-file) from a hosts file.
#
# --driver BUILD_DIR: no lab; our server gets its names through
# dns_server_session_up, the path the session event stream uses
# (bench/dns_zone_driver.c, compiled here against that build's libraries).
#
# usage: bench/dns_qps.sh [--driver BUILD_DIR]
#        env: DURATION=10 NAMES=10000 CLIENTS=4 OUTSTANDING=200 RB_BIN_DIR
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SRC=$ROOT
DURATION=${DURATION:-10}
NAMES=${NAMES:-10000}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
DRIVER_BUILD=""
case ${1:-} in
    --driver) DRIVER_BUILD=${2:-$SRC/build} ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) die "unknown argument '$1'" ;;
esac
for tool in dnsperf dnsmasq dig python3; do
    command -v $tool >/dev/null || die "$tool is not installed"
done
bench_watchdog $(( 600 + 4 * DURATION ))

if [[ -n $DRIVER_BUILD ]]; then
    BUILD=$DRIVER_BUILD
    command -v cc >/dev/null || die "cc is not installed"
    for lib in libdns_core.a lib/librb_lib.a proto/librb_proto.a; do
        [ -f "$BUILD/$lib" ] || die "$BUILD/$lib missing (build dns_core first)"
    done
    # shellcheck disable=SC2046
    cc -O2 -D_GNU_SOURCE -std=c11 "$SRC/bench/dns_zone_driver.c" -I "$SRC/services/dns" \
        -I "$SRC/lib" -I "$BUILD/proto/gen" -o "$WORK/dns_zone_driver" "$BUILD/libdns_core.a" \
        "$BUILD/lib/librb_lib.a" "$BUILD/proto/librb_proto.a" \
        $(pkg-config --libs libzmq libprotobuf-c libmicrohttpd) -lssl -lcrypto -lpthread -lm
    # The driver's names: userN.vpn.lab -> 127.77.0.1 + N.
    python3 - "$WORK/sessions" "$NAMES" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        ip = 0x7f4d0001 + i
        f.write("user%d %d.%d.%d.%d user%d.vpn.lab\n" % (i, ip >> 24, ip >> 16 & 255, ip >> 8 & 255, ip & 255, i))
PY
    port OUR_PORT
    "$WORK/dns_zone_driver" "$OUR_PORT" "$NAMES" >"$WORK/driver.out" &
    OUR_PID=$!
    bench_track "$OUR_PID"
    MODE="bench/dns_zone_driver (no lab)"
else
    bench_ensure_built reachback-edge reachback-broker reachback-ipalloc reachback-dns \
        reachback-forwarder reachback-ctl reachback-client reachback-loadgen
    say "starting a lab in $LAB"
    lab_start
    openssl rand -hex 12 > "$WORK/password"
    add_users bench "$NAMES" 1 "$WORK/password"
    lab_restart_edge
    say "logging on $NAMES users"
    "$BIN/reachback-loadgen" --server "$EDGE_ADDR" --ca "$CA" --users-prefix bench \
        --count "$NAMES" --concurrency 200 --password-file "$WORK/password" \
        --dns "$DNS_ADDR:$DNS_PORT" --suffix "$DNS_SUFFIX" --hold 3600 --duration 1200 \
        --logoff-timeout 30000 --ready-file "$WORK/ready" --sessions-file "$WORK/sessions" \
        >"$WORK/loadgen.out" 2>&1 &
    LG=$!
    bench_track "$LG"
    wait_file "$WORK/ready" 300 "$LG" || die "sessions did not come up: $(tail -n 2 "$WORK/loadgen.out")"
    [[ $(json_num "$WORK/ready" up) == "$NAMES" ]] \
        || say "only $(json_num "$WORK/ready" up) of $NAMES sessions are up"
    OUR_PORT=$DNS_PORT
    OUR_PID=$(pid_of dns)
    MODE="real lab, $(json_num "$WORK/ready" up) users logged on and held by reachback-loadgen"
fi

# Both servers get the same names; the queries are random existing names.
awk '{ print $2, $3 }' "$WORK/sessions" > "$WORK/hosts"
NAMES_SERVED=$(wc -l < "$WORK/hosts")
(( NAMES_SERVED > 0 )) || die "no names to serve"
python3 - "$WORK/sessions" "$WORK/queries" <<'PY'
import random, sys
random.seed(1)
names = [l.split()[2] for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[2], "w") as q:
    for _ in range(max(len(names), 10000)):
        q.write("%s A\n" % random.choice(names))
PY
FIRST=$(awk 'NR == 1 { print $3 }' "$WORK/sessions")
ZONE=${FIRST#*.}

port DM_PORT
dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --addn-hosts="$WORK/hosts" --port="$DM_PORT" --listen-address=127.0.0.1 --bind-interfaces \
    --cache-size=10000 --local="/$ZONE/" --pid-file="$WORK/dnsmasq.pid" \
    $( [ "$(id -u)" = 0 ] && echo --user=root ) 2>"$WORK/dnsmasq.err" &
DM_PID=$!
bench_track "$DM_PID"

wait_answer() {   # port: until the first name resolves, at most 10 s
    for _ in $(seq 100); do
        [ -n "$(dig @127.0.0.1 -p "$1" "$FIRST" +short +time=1 +tries=1 2>/dev/null)" ] && return 0
        sleep 0.1
    done
    die "nothing answers $FIRST on port $1"
}
wait_answer "$OUR_PORT"
wait_answer "$DM_PORT"

ROWS=()
run() {   # name port pid
    local t0 t1 out qps lost lat
    t0=$(cpu_ticks "$3")
    out=$(timeout $(( DURATION + 30 )) dnsperf -s 127.0.0.1 -p "$2" -d "$WORK/queries" \
        -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" 2>&1) || true
    t1=$(cpu_ticks "$3")
    qps=$(awk '/Queries per second/ {printf "%.0f", $4}' <<<"$out")
    lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
    lat=$(awk '/Average Latency/ {printf "%.0f", $4 * 1e6}' <<<"$out")
    ROWS+=("| $1 | **${qps:-?}** | ${lost:-?} | ${lat:-?} | $(awk -v t=$((t1 - t0)) -v d="$DURATION" -v hz="$CLK_TCK" \
        'BEGIN {printf "%.0f%%", 100 * t / hz / d}') |")
}
run reachback-dns "$OUR_PORT" "$OUR_PID"
run "dnsmasq $(dnsmasq --version | sed -n 's/^Dnsmasq version \([^ ]*\).*/\1/p')" "$DM_PORT" "$DM_PID"

echo
echo "### DNS queries per second ($(date -u +%Y-%m-%dT%H:%MZ); $(machine))"
echo
echo "$NAMES_SERVED names ($MODE); dnsperf -l $DURATION -c $CLIENTS -q $OUTSTANDING, UDP, type A, all names exist."
echo
echo "| server | queries/s | lost | avg latency us | server CPU |"
echo "| --- | ---: | ---: | ---: | ---: |"
printf '%s\n' "${ROWS[@]}"
echo
echo "Target: at least dnsmasq's queries/s on the same zone, in the same run; aim for Knot's (DESIGN §6)."
echo "dnsperf runs on the same cores; a server CPU near 100% means the server, not dnsperf, was the limit."
