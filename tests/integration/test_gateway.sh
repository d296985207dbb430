#!/usr/bin/env bash
# reachback-gateway: the edge and the forwarder in one process, their data
# link over inproc:// (the lab with RB_LAB_DATA_LINK=inproc). One process
# answers on both status ports, each service with its own metrics and log
# name; a device's exposed port and its --forward work through it; SIGHUP
# reloads the forwarder's policy and leaves the edge be; SIGTERM stops the
# edge as reachback-edge stops (the device hears why), then the forwarder.
# Configs that cannot link are refused at start.
# (test_stream_close, test_refused and test_udp_forward run on this lab
# too: the *_inproc tests.)
. "$(dirname "$0")/lib.sh"
RB_LAB_DATA_LINK=inproc lab_start
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
client_start alice alice --expose tcp:5900=127.0.0.1:$ECHO_PORT --forward 127.0.0.1:0:127.0.0.1:$WHO_PORT
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

# SIGHUP: the forwarder reloads its policy; the edge (same process) goes on.
cat > "$LAB/conf/policy.conf" <<'POL'
deny  127.0.0.0/8  user:alice  5900  tcp
allow 127.0.0.0/8  *           *     any
POL
reload_policy
grep -q '"svc":"forwarder","event":"policy_loaded"' "$log" || fail "policy_loaded not from svc forwarder"
refused_within 2000 bash -c "echo x | ncat -w 2 $ip 5900 | grep -q x" \
    || fail "port 5900 still answers after the deny was loaded"
proc_running "$GW" && client_running alice || fail "SIGHUP stopped the gateway or cut alice"
[[ $(curl -sf "$EDGE_STATUS_URL/status") == *'"sessions":1'* ]] || fail "the edge lost alice's session"
ok "SIGHUP reloaded the forwarder's policy (5900 now reset); the edge and alice's session stay"

# SIGTERM: the edge stops first and says why; then the forwarder; exit 0.
kill -TERM "$GW"
wait_until 3000 bash -c "! kill -0 $GW 2>/dev/null" || fail "the gateway still runs 3 s after SIGTERM"
grep -q 'the edge is stopping' "$LAB/alice.out" || fail "alice did not hear that the edge is stopping"
edge_stop=$(grep -n '"svc":"edge","event":"edge_stopping"' "$log" | head -1 | cut -d: -f1)
fwd_stop=$(grep -n '"svc":"forwarder","event":"shutdown"' "$log" | head -1 | cut -d: -f1)
[[ -n $edge_stop && -n $fwd_stop ]] && (( edge_stop < fwd_stop )) \
    || fail "want the edge's edge_stopping before the forwarder's shutdown (lines '$edge_stop', '$fwd_stop')"
# Not a crash: the cleanup would count a dead service as one.
rm -f "$LAB/run/gateway.pid" "$LAB/run/edge1.pid" "$LAB/run/forwarder.pid"
ok "SIGTERM: the edge stopped first (alice heard why), then the forwarder"

# Configs that cannot link.
gw() { "$BIN/reachback-gateway" --edge-config "$LAB/conf/edge1.conf" --forwarder-config "$1" --check-config 2>&1; }
sed 's#^data_endpoint = .*#data_endpoint = ipc:///tmp/x.sock#' "$LAB/conf/forwarder.conf" > "$LAB/fwd-ipc.conf"
out=$(gw "$LAB/fwd-ipc.conf") && fail "the gateway took an ipc:// data_endpoint"
[[ $out == *"is not inproc://"* ]] || fail "ipc:// data_endpoint: '$out'"
sed 's#^data_endpoint = .*#data_endpoint = inproc://elsewhere#' "$LAB/conf/forwarder.conf" > "$LAB/fwd-other.conf"
out=$(gw "$LAB/fwd-other.conf") && fail "the gateway took a data_endpoint its edge does not name"
[[ $out == *"does not name the forwarder's data_endpoint inproc://elsewhere"* ]] || fail "mismatch: '$out'"
out=$(timeout 5 "$BIN/reachback-edge" --config "$LAB/conf/edge1.conf" 2>&1) && fail "reachback-edge ran with inproc://"
[[ $out == *"work only in reachback-gateway"* ]] || fail "reachback-edge with inproc://: '$out'"
out=$(timeout 5 "$BIN/reachback-forwarder" --config "$LAB/conf/forwarder.conf" 2>&1) \
    && fail "reachback-forwarder ran with inproc://"
[[ $out == *"works only in reachback-gateway"* ]] || fail "reachback-forwarder with inproc://: '$out'"
ok "refused: an ipc:// or unnamed data_endpoint in the gateway, inproc:// in reachback-edge/-forwarder"
