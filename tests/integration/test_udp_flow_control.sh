#!/usr/bin/env bash
# Issue 4, flow control for datagrams: the data link never queues a flood.
# A device's datagrams towards a forwarder that has stopped (SIGSTOP) cost
# its edge at most RB_LINK_DATAGRAM_WINDOW (1 MiB) per session; past it the
# edge drops and counts them. Internal senders' datagrams to a device's
# exposed UDP port while its edge has stopped spend the session's credit
# (RB_SESSION_WINDOW, 4 MiB) as DATA does; past it the forwarder drops and
# counts them. When the stopped process runs again the credit comes back
# and datagrams get through both ways.
. "$(dirname "$0")/lib.sh"
# Under AddressSanitizer freed blocks wait in a quarantine and count as
# RSS; a small one keeps the measure about our queues, not ASan's.
[[ -n ${ASAN_OPTIONS:-} ]] && export ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=1:thread_local_quarantine_size_kb=64"
lab_start
ECHO_PORT=$(free_port); SINK_PORT=$(free_port); DEV_ECHO=$(free_port); DEV_SINK=$(free_port)
udp_echo "$ECHO_PORT"
udp_echo "$DEV_ECHO"
bg socat -u UDP4-RECV:"$SINK_PORT",bind=127.0.0.1,reuseaddr OPEN:/dev/null
bg socat -u UDP4-RECV:"$DEV_SINK",bind=127.0.0.1,reuseaddr OPEN:/dev/null
client_start alice alice --expose udp:5353=127.0.0.1:$DEV_ECHO --expose udp:5354=127.0.0.1:$DEV_SINK \
    --forward udp:127.0.0.1:0:127.0.0.1:$ECHO_PORT --forward udp:127.0.0.1:0:127.0.0.1:$SINK_PORT
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
ip=$(json_field "$LAB/alice.json" ip)
read -r TO_ECHO TO_SINK < <(sed -n 's/.*"listen_ports":\[\([0-9]*\),\([0-9]*\)\].*/\1 \2/p' "$LAB/alice.json")
[[ -n $TO_SINK ]] || fail "alice's status file has no two listen ports: $(cat "$LAB/alice.json")"

# ask HOST PORT TEXT: one datagram from a fresh local port, the answer.
ask() { echo "$3" | timeout 3 socat -T 1 - UDP4:"$1":"$2" 2>/dev/null || true; }
answers() { [[ $(ask "$1" "$2" "$3") == "$3" ]]; }
wait_until 5000 answers 127.0.0.1 "$TO_ECHO" out-before || fail "alice's UDP forward does not answer"
wait_until 5000 answers "$ip" 5353 in-before || fail "alice's exposed udp:5353 does not answer"

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
FWD_PID=$(cat "$LAB/run/forwarder.pid"); EDGE_PID=$(cat "$LAB/run/edge1.pid")
LIMIT_KB=$((16 * 1024))

# 1. The device floods its forward while the forwarder is stopped: from a
# flow that is open already (a new one waits for its open's answer).
SRC=$(free_port)
flows() { metric "$FORWARDER_STATUS_URL" reachback_forwarder_udp_flows; }
flows_before=$(flows)
python3 "$PEER" udp-blast 127.0.0.1 "$TO_SINK" 100 0.1 "$SRC" >/dev/null
wait_until 3000 bash -c "(( \$(curl -sf $FORWARDER_STATUS_URL/metrics | awk '\$1 == \"reachback_forwarder_udp_flows\" { print \$2 }') > $flows_before ))" \
    || fail "the forwarder shows no new flow (before: $flows_before, now: $(flows))"
edge_drops=$(metric "$EDGE_STATUS_URL" reachback_edge_datagrams_dropped_total)
edge_before=$(rss_kb "$EDGE_PID")
kill -STOP "$FWD_PID"
sent=$(python3 "$PEER" udp-blast 127.0.0.1 "$TO_SINK" 60000 2 "$SRC")
sleep 0.5   # what the device still holds reaches the edge
grow=$(( $(rss_kb "$EDGE_PID") - edge_before ))
edge_drops=$(( $(metric "$EDGE_STATUS_URL" reachback_edge_datagrams_dropped_total) - edge_drops ))
kill -CONT "$FWD_PID"
echo "  device sent $sent datagrams of 60000 bytes; edge RSS +$grow KiB, $edge_drops dropped"
(( grow < LIMIT_KB )) || fail "the edge grew by $grow KiB holding datagrams for a stopped forwarder"
(( edge_drops > 0 )) || fail "the edge counted no dropped datagrams ($sent sent to a stopped forwarder)"
ok "forwarder stopped: $sent datagrams from the device, the edge grew $grow KiB and dropped $edge_drops"
wait_until 10000 answers 127.0.0.1 "$TO_ECHO" out-after || fail "after SIGCONT alice's UDP forward does not answer"
ok "after SIGCONT the device's datagrams get through again (the forwarder gave the credit back)"

# 2. Internal senders flood the device's exposed port while the edge is stopped.
fwd_drops=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_udp_dropped_total)
fwd_before=$(rss_kb "$FWD_PID")
kill -STOP "$EDGE_PID"
sent=$(python3 "$PEER" udp-blast "$ip" 5354 60000 2)
grow=$(( $(rss_kb "$FWD_PID") - fwd_before ))
kill -CONT "$EDGE_PID"
fwd_drops=$(( $(metric "$FORWARDER_STATUS_URL" reachback_forwarder_udp_dropped_total) - fwd_drops ))
echo "  internal sender sent $sent datagrams of 60000 bytes; forwarder RSS +$grow KiB, $fwd_drops dropped"
(( grow < LIMIT_KB )) || fail "the forwarder grew by $grow KiB holding datagrams for a stopped edge"
(( fwd_drops > 0 )) || fail "the forwarder counted no dropped datagrams ($sent sent towards a stopped edge)"
ok "edge stopped: $sent datagrams to alice's exposed port, the forwarder grew $grow KiB and dropped $fwd_drops"
wait_until 10000 answers "$ip" 5353 in-after || fail "after SIGCONT alice's exposed udp:5353 does not answer"
ok "after SIGCONT datagrams reach the device again (the edge gave the session's credit back)"
