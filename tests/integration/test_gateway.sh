#!/usr/bin/env bash
# reachback-gateway: the edge and the forwarder in one process, their data
# link over inproc:// (the lab with RB_LAB_DATA_LINK=inproc). One process
# answers on both status ports, each service with its own metrics and log
# name; a device's exposed port and its --forward work through it; a second
# edge in a process of its own reaches the same forwarder over tcp:// with
# CURVE, and devices on the two edges reach each other; SIGHUP
# reloads the forwarder's policy and leaves the edge be; SIGTERM stops the
# edge as reachback-edge stops (the device hears why), then the forwarder.
# Configs that cannot link are refused at start.
# (test_stream_close, test_refused and test_udp_forward run on this lab
# too: the *_inproc tests.)
. "$(dirname "$0")/lib.sh"
RB_LAB_DATA_LINK=inproc lab_start --edges 2
GW=$(cat "$LAB/run/gateway.pid")
[[ $(cat "$LAB/run/edge1.pid") == "$GW" && $(cat "$LAB/run/forwarder.pid") == "$GW" ]] \
    || fail "edge1 and the forwarder are not the gateway's process ($GW)"
[[ $(tr '\0' ' ' </proc/"$GW"/cmdline) == *reachback-gateway* ]] || fail "pid $GW is not reachback-gateway"
wait_until 3000 bash -c "curl -sf $EDGE_STATUS_URL/status | grep -q '\"forwarders_up\":1'" \
    || fail "the edge's link to its forwarder is not up: $(curl -s "$EDGE_STATUS_URL/status")"
ok "one reachback-gateway process (pid $GW) is the edge and the forwarder; their link is up"

# Each service keeps its own /metrics and its own name in the log.
em=$(curl -sf "$EDGE_STATUS_URL/metrics"); fm=$(curl -sf "$FORWARDER_STATUS_URL/metrics")
grep -q '^reachback_edge_' <<<"$em" || fail "the edge's /metrics has no edge series"
grep -q '^reachback_forwarder_' <<<"$fm" || fail "the forwarder's /metrics has no forwarder series"
! grep -q '^reachback_forwarder_' <<<"$em" || fail "the edge's /metrics shows forwarder series"
! grep -q '^reachback_edge_' <<<"$fm" || fail "the forwarder's /metrics shows edge series"
log=$LAB/logs/gateway.log
grep -q '"svc":"edge","event":"edge_listening"' "$log" || fail "no edge_listening line named svc edge"
grep -q '"svc":"forwarder","event":"data_link","msg":"data link on inproc://' "$log" \
    || fail "no data_link line named svc forwarder"
ok "each service has its own /metrics and its own svc name in the shared log"

# The data plane through the in-process link.
ECHO_PORT=$(free_port); WHO_PORT=$(free_port)
echo_server "$ECHO_PORT"
bg python3 "$PEER" whoami "$WHO_PORT"
wait_until 5000 listening "$WHO_PORT" || fail "whoami server did not start"
client_start alice alice --expose tcp:5900=127.0.0.1:$ECHO_PORT --forward 127.0.0.1:0:127.0.0.1:$WHO_PORT \
    --forward 127.0.0.1:0:bob.$DNS_SUFFIX:5901
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
ip=$(json_field "$LAB/alice.json" ip)
wait_until 3000 bash -c "curl -sf $FORWARDER_STATUS_URL/status | grep -q '\"attached_sessions\":1'" \
    || fail "alice's session is not attached: $(curl -s "$FORWARDER_STATUS_URL/status")"
head -c 1000000 /dev/urandom > "$LAB/blob"
got=$(timeout 10 ncat "$ip" 5900 < "$LAB/blob" | md5sum)
[[ $got == "$(md5sum < "$LAB/blob")" ]] || fail "1 MB through $ip:5900 came back different"
seen=$(timeout 5 ncat 127.0.0.1 "$(listen_port "$LAB/alice.json" 0)" </dev/null) || true
[[ $seen == "$ip" ]] || fail "the internal server saw '$seen', not alice's $ip"
ok "1 MB echoed intact through $ip:5900; alice's --forward arrives from $seen"

# bob on edge2, a process of its own: its link to the gateway's forwarder
# is the forwarder's second endpoint, tcp:// with CURVE.
[[ $(awk '$1 == "forwarder_endpoints" { print $3 }' "$LAB/conf/edge2.conf") == tcp://* ]] \
    || fail "edge2 does not link over tcp://"
[[ $(cat "$LAB/run/edge2.pid") != "$GW" ]] || fail "edge2 runs in the gateway"
client_start_at bob bob "$(edge_addr 2)" --expose tcp:5901=127.0.0.1:$ECHO_PORT
wait_until 10000 test -s "$LAB/bob.json" || fail "bob did not log on at edge2: $(cat "$LAB/bob.out")"
bob_ip=$(json_field "$LAB/bob.json" ip)
wait_until 3000 bash -c "curl -sf $FORWARDER_STATUS_URL/status | grep -q '\"attached_sessions\":2'" \
    || fail "bob's session is not attached: $(curl -s "$FORWARDER_STATUS_URL/status")"
got=$(timeout 10 ncat "$bob_ip" 5901 < "$LAB/blob" | md5sum)
[[ $got == "$(md5sum < "$LAB/blob")" ]] || fail "1 MB through bob's $bob_ip:5901 came back different"
got=$(echo d2d | timeout 5 ncat -w 3 127.0.0.1 "$(listen_port "$LAB/alice.json" 1)") || true
[[ $got == d2d ]] || fail "alice -> bob.$DNS_SUFFIX:5901 (inproc in, tcp out) answered '$got'"
ok "bob at edge2 (tcp:// + CURVE to the gateway's forwarder): 1 MB intact; alice reaches bob device to device"

# SIGHUP: the forwarder reloads its policy; the edge (same process) goes on.
cat > "$LAB/conf/policy.conf" <<'POL'
deny  127.0.0.0/8  user:alice  5900  tcp
allow 127.0.0.0/8  *           *     any
POL
reload_policy
grep '"event":"policy_loaded"' "$log" | tail -1 | grep -q '"svc":"forwarder"' \
    || fail "the reload's policy_loaded line is not from svc forwarder"
refused_within 2000 bash -c "echo x | ncat -w 2 $ip 5900 | grep -q x" \
    || fail "port 5900 still answers after the deny was loaded"
proc_running "$GW" && client_running alice || fail "SIGHUP stopped the gateway or cut alice"
[[ $(curl -sf "$EDGE_STATUS_URL/status") == *'"sessions":1'* ]] || fail "the edge lost alice's session"
ok "SIGHUP reloaded the forwarder's policy (5900 now reset); the edge and alice's session stay"

# The lab's kill and revive take the pair as one process.
"$ROOT/scripts/lab" kill --dir "$LAB" forwarder 2>/dev/null
! proc_running "$GW" || fail "lab kill forwarder left the gateway running"
[[ ! -e $LAB/run/gateway.pid && ! -e $LAB/run/edge1.pid ]] || fail "lab kill left the gateway's pid files"
"$ROOT/scripts/lab" revive --dir "$LAB" edge || fail "lab revive edge did not bring the gateway back"
GW=$(cat "$LAB/run/gateway.pid")
[[ $(cat "$LAB/run/forwarder.pid") == "$GW" ]] || fail "after revive the forwarder is not the gateway ($GW)"
wait_until 15000 bash -c "curl -sf $FORWARDER_STATUS_URL/status | grep -q '\"attached_sessions\":2'" \
    || fail "alice's and bob's sessions are not back at the revived gateway: $(tail -2 "$LAB/alice.out")"
got=$(echo again | timeout 5 ncat -w 3 "$ip" 5900 2>/dev/null) || true
[[ $got != again ]] || fail "the revived gateway lost the policy: 5900 answered"
seen=$(timeout 5 ncat 127.0.0.1 "$(listen_port "$LAB/alice.json" 0)" </dev/null) || true
[[ $seen == "$ip" ]] || fail "after revive alice's --forward arrived from '$seen'"
ok "lab kill forwarder stopped the whole gateway; revive edge brought both back; alice resumed"

# SIGTERM: the edge stops first and says why; then the forwarder, cleanly.
kill -TERM "$GW"
gone() { ! proc_running "$GW"; }
wait_until 3000 gone || fail "the gateway still runs 3 s after SIGTERM"
grep -q 'the edge is stopping' "$LAB/alice.out" || fail "alice did not hear that the edge is stopping"
edge_stop=$(grep -n '"svc":"edge","event":"edge_stopping"' "$log" | head -1 | cut -d: -f1)
fwd_stop=$(grep -n '"svc":"forwarder","event":"shutdown"' "$log" | head -1 | cut -d: -f1)
[[ -n $edge_stop && -n $fwd_stop ]] && (( edge_stop < fwd_stop )) \
    || fail "want the edge's edge_stopping before the forwarder's shutdown (lines '$edge_stop', '$fwd_stop')"
# It stopped, not crashed: its last line says both ended cleanly (the
# cleanup would count the dead process as a crash, so its pid files go).
tail -1 "$log" | grep -q '"event":"gateway_stopped"' || fail "no clean stop: $(tail -2 "$log")"
rm -f "$LAB/run/gateway.pid" "$LAB/run/edge1.pid" "$LAB/run/forwarder.pid"
ok "SIGTERM: the edge stopped first (alice heard why), then the forwarder, cleanly"

# Configs that cannot link.
# gwcheck EDGE_CONF FWD_CONF: --check-config of the pair, its output.
gwcheck() { "$BIN/reachback-gateway" --edge-config "$1" --forwarder-config "$2" --check-config 2>&1; }
sed 's#^data_endpoint = .*#data_endpoint = ipc:///tmp/x.sock#' "$LAB/conf/forwarder.conf" > "$LAB/fwd-ipc.conf"
out=$(gwcheck "$LAB/conf/edge1.conf" "$LAB/fwd-ipc.conf") && fail "the gateway took an ipc:// data_endpoint"
[[ $out == *"lists 0 inproc:// endpoints, not one"* ]] || fail "ipc:// data_endpoint: '$out'"
sed 's#^forwarder_endpoints = .*#forwarder_endpoints = tcp://127.0.0.1:1#' "$LAB/conf/edge1.conf" > "$LAB/edge-tcp.conf"
out=$(gwcheck "$LAB/edge-tcp.conf" "$LAB/conf/forwarder.conf") && fail "the gateway took an edge that does not name its forwarder"
[[ $out == *"does not name the forwarder's inproc:// endpoint inproc://reachback-data"* ]] || fail "unnamed: '$out'"
sed 's#^forwarder_endpoints = .*#forwarder_endpoints = inproc://reachback-data,inproc://other#' \
    "$LAB/conf/edge1.conf" > "$LAB/edge-two.conf"
out=$(gwcheck "$LAB/edge-two.conf" "$LAB/conf/forwarder.conf") && fail "the gateway took a second inproc:// forwarder"
[[ $out == *"inproc://other is not the forwarder's inproc:// endpoint"* ]] || fail "second inproc://: '$out'"
for s in edge forwarder; do
    rc=0; out=$(timeout 5 "$BIN/reachback-$s" --check-config --config "$LAB/conf/${s/edge/edge1}.conf" 2>&1) || rc=$?
    [[ $rc == 1 && $out == *"inproc:// endpoints work only in reachback-gateway"* ]] \
        || fail "reachback-$s with inproc://: rc=$rc '$out'"
done
# ipc:// beside tcp://: the socket would want CURVE of ipc:// peers too.
sed 's#^data_endpoint = .*#data_endpoint = ipc:///tmp/x.sock,tcp://127.0.0.1:1#' "$LAB/conf/forwarder.conf" > "$LAB/fwd-mix.conf"
rc=0; out=$("$BIN/reachback-forwarder" --check-config --config "$LAB/fwd-mix.conf" 2>&1) || rc=$?
[[ $rc == 1 && $out == *"ipc:// beside tcp://"* ]] || fail "ipc:// beside tcp://: rc=$rc '$out'"
ok "refused: an ipc://, unnamed or second inproc:// data link in the gateway; inproc:// in reachback-edge/-forwarder; ipc:// beside tcp://"
