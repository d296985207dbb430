#!/usr/bin/env bash
# Issue 4, flow control: a stream whose reader stops (the device's local
# service never reads) holds at most its credit window at each hop: while an
# internal server offers 100 MB, no process's memory grows beyond a few
# windows, the sender is held back by TCP, and another stream of the same
# session keeps its speed. A device that stops reading its tunnel entirely
# (SIGSTOP) does not grow the edge or the forwarder either, however many
# streams it has: together they get the session's credit (RB_SESSION_WINDOW,
# 4 MiB), not a window each. The other way, a device sending on many streams
# to an internal server that never reads makes the forwarder keep at most
# max_held_per_session_kib for its session (4 MiB here, 32 MiB by default).
. "$(dirname "$0")/lib.sh"
# Under AddressSanitizer freed blocks wait in a 256 MiB quarantine and count
# as RSS; a small one keeps the measure about our buffers, not ASan's.
[[ -n ${ASAN_OPTIONS:-} ]] && export ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=1:thread_local_quarantine_size_kb=64"
lab_start --set forwarder.max_held_per_session_kib=4096
SINK_PORT=$(free_port); ECHO_PORT=$(free_port); IPERF_PORT=$(free_port)
bg python3 "$PEER" sink "$SINK_PORT"
bg iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$LAB/iperf-server.log" 2>&1
wait_until 5000 listening "$SINK_PORT" || fail "sink did not start"
echo_server "$ECHO_PORT"
client_start alice alice --expose tcp:7100=127.0.0.1:$SINK_PORT --expose tcp:7101=127.0.0.1:$ECHO_PORT \
    --expose tcp:7102=127.0.0.1:$IPERF_PORT --forward 127.0.0.1:0:127.0.0.1:$SINK_PORT
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
ip=$(json_field "$LAB/alice.json" ip)
wait_until 3000 bash -c "echo t | timeout 2 ncat $ip 7101 | grep -q t" || fail "echo port not reachable"

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
FWD_PID=$(cat "$LAB/run/forwarder.pid"); EDGE_PID=$(cat "$LAB/run/edge1.pid"); DEV_PID=$CLIENT_PID_alice
# Windows are 2 MiB (RB_STREAM_WINDOW); allow a few per process plus slack.
LIMIT_KB=$((12 * 1024))

base=$(python3 "$PEER" rate "$ip" 7101 2) || fail "rate before the stall"
declare -A before
for p in $FWD_PID $EDGE_PID $DEV_PID; do before[$p]=$(rss_kb "$p"); done

python3 "$PEER" source "$ip" 7100 100000000 8 >"$LAB/source.out" &
SRC=$!
CHILDREN+=("$SRC")
sleep 2
during=$(python3 "$PEER" rate "$ip" 7101 3) || fail "rate during the stall"
wait "$SRC" || fail "the source failed: $(cat "$LAB/source.out")"
sent=$(cat "$LAB/source.out")
for p in $FWD_PID $EDGE_PID $DEV_PID; do
    grow=$(( $(rss_kb "$p") - ${before[$p]} ))
    (( grow < LIMIT_KB )) || fail "pid $p ($(cat /proc/$p/comm)) grew by $grow KiB with one stalled stream"
    echo "  $(cat /proc/$p/comm): RSS +$grow KiB"
done
(( sent < 40000000 )) || fail "the internal sender pushed $sent bytes into a stalled stream"
ok "100 MB offered to a stalled stream: the sender got $sent bytes in (TCP held it back), no process grew by 12 MiB"
# Loopback rates vary with the machine's load; half the unloaded rate
# separates "keeps its speed" from "stalled behind the other stream".
(( during * 2 > base )) || fail "the other stream slowed from $base to $during B/s"
ok "the other stream of the session kept its speed: $during B/s during the stall vs $base B/s before"

# 40 streams of one session share its credit (40 windows are 80 MiB, the
# session gets 8): each gets its turn, none starves.
wait_until 5000 listening "$IPERF_PORT" || fail "iperf3 did not start"
iperf3 -c "$ip" -p 7102 -P 40 -t 3 -J >"$LAB/iperf40.json" 2>&1 || fail "iperf3 -P 40: $(tail -3 "$LAB/iperf40.json")"
read -r jain agg lo hi < <(python3 - "$LAB/iperf40.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = [s["receiver"]["bits_per_second"] for s in d["end"]["streams"]]
print("%.3f %.0f %.0f %.0f" % (sum(r) ** 2 / (len(r) * sum(x * x for x in r)),
      d["end"]["sum_received"]["bits_per_second"] / 1e6, min(r) / 1e6, max(r) / 1e6))
PY
)
python3 -c "import sys; sys.exit(0 if float('$jain') >= 0.95 else 1)" \
    || fail "40 streams of one session: Jain's index $jain (per stream $lo-$hi Mbit/s)"
ok "40 streams of one session: $agg Mbit/s, per stream $lo-$hi Mbit/s, Jain's index $jain"

# The whole device stops reading its tunnel: edge and forwarder hold at most
# a window per stream.
for p in $FWD_PID $EDGE_PID; do before[$p]=$(rss_kb "$p"); done
kill -STOP "$DEV_PID"
python3 "$PEER" source "$ip" 7101 100000000 5 >"$LAB/source2.out" || true
for p in $FWD_PID $EDGE_PID; do
    grow=$(( $(rss_kb "$p") - ${before[$p]} ))
    (( grow < LIMIT_KB )) || { kill -CONT "$DEV_PID"; fail "$(cat /proc/$p/comm) grew by $grow KiB while the device was stopped"; }
    echo "  $(cat /proc/$p/comm): RSS +$grow KiB"
done
kill -CONT "$DEV_PID"
ok "device stopped (SIGSTOP): the sender got $(cat "$LAB/source2.out") bytes in, edge and forwarder stayed within 12 MiB"
wait_until 10000 bash -c "echo again | timeout 2 ncat $ip 7101 | grep -q again" || fail "the session did not recover after SIGCONT"
ok "after SIGCONT the session carries new streams again"

# Many streams at once while the device is stopped: 24 windows would be
# 48 MiB at the edge; the session's credit keeps its queue to 4 MiB (the
# heap's own slack, from one malloc arena per thread, comes on top).
MANY_KB=$((24 * 1024))
fwd_streams() { metric "$FORWARDER_STATUS_URL" reachback_forwarder_streams; }
streams_before=$(fwd_streams)
for p in $FWD_PID $EDGE_PID; do before[$p]=$(rss_kb "$p"); done
kill -STOP "$DEV_PID"
srcs=()
for i in $(seq 24); do
    python3 "$PEER" source "$ip" 7101 20000000 4 >"$LAB/many$i.out" &
    srcs+=("$!")
done
for p in "${srcs[@]}"; do wait "$p" || true; done
for p in $FWD_PID $EDGE_PID; do
    grow=$(( $(rss_kb "$p") - ${before[$p]} ))
    (( grow < MANY_KB )) || { kill -CONT "$DEV_PID"; fail "$(cat /proc/$p/comm) grew by $grow KiB with 24 streams to a stopped device"; }
    echo "  $(cat /proc/$p/comm): RSS +$grow KiB"
done
kill -CONT "$DEV_PID"
took=$(cat "$LAB"/many*.out | awk '{ s += $1 } END { print s }')
ok "24 streams to a stopped device: senders got $took bytes in, edge and forwarder stayed within $((MANY_KB / 1024)) MiB"
wait_until 10000 bash -c "echo again | timeout 2 ncat $ip 7101 | grep -q again" || fail "the session did not recover after the second SIGCONT"
# What the 24 senders left in their sockets reaches the device now; once
# those streams are over, a new one has the session to itself again.
wait_until 60000 bash -c "(( \$(curl -sf $FORWARDER_STATUS_URL/metrics | awk '\$1==\"reachback_forwarder_streams\"{print \$2}') <= $streams_before ))" \
    || fail "the 24 streams did not end after SIGCONT ($(fwd_streams) open, $streams_before before)"
# Credit given back in full: 20 MB (more than twice the session's credit)
# go to the device's echo and all come back.
got=$(head -c 20000000 /dev/zero | timeout 60 ncat "$ip" 7101 | wc -c)
(( got == 20000000 )) || fail "after the stall 20 MB through the echo came back as $got bytes"
ok "after SIGCONT the session's credit is back: 20 MB through the device's echo and back"

# The other way: the device sends on 24 streams (its --forward) to an
# internal server that never reads. Each stream's window lets the forwarder
# keep up to 2 MiB for it (here it settles near 0.5 MiB, about 12 MiB in
# all); past the session's 4 MiB the stream holding the most is reset
# (counted, logged), and the session carries new streams.
FWD_LOCAL=$(listen_port "$LAB/alice.json" 0)
resets() { metric "$FORWARDER_STATUS_URL" reachback_forwarder_held_resets_total; }
held_logged() { grep -c '"event":"session_held_full"' "$LAB/logs/forwarder.log" || true; }
resets0=$(resets); logged0=$(held_logged)
fwd_before=$(rss_kb "$FWD_PID")
srcs=()
for i in $(seq 24); do
    python3 "$PEER" source 127.0.0.1 "$FWD_LOCAL" 20000000 5 >"$LAB/up$i.out" 2>&1 &
    srcs+=("$!")
done
reset_seen() { local r; r=$(resets); (( ${r%.*} > ${resets0%.*} )); }
wait_until 20000 reset_seen || fail "no stream was reset for the session's held bytes (still $(resets))"
for p in "${srcs[@]}"; do wait "$p" || true; done
grow=$(( $(rss_kb "$FWD_PID") - fwd_before ))
resets1=$(resets)
(( $(held_logged) > logged0 )) || fail "the reset was not logged"
(( grow < 10 * 1024 )) || fail "the forwarder grew by $grow KiB for 24 streams to a server that does not read"
echo "  forwarder: RSS +$grow KiB, $(( ${resets1%.*} - ${resets0%.*} )) streams reset"
wait_until 3000 bash -c "echo up | timeout 2 ncat $ip 7101 | grep -q up" || fail "the session stopped carrying streams"
ok "24 streams from the device to a server that does not read: past the session's 4 MiB the fullest were reset, the forwarder grew by less than 10 MiB, the session goes on"
