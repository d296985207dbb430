#!/usr/bin/env bash
# Issue 4, point 5: streams behave like TCP. A half-close on either side is
# seen as EOF on the other while the reverse direction keeps flowing; a
# reset on either side reaches the other; and every stream is torn down on
# both sides when the session is logged off, kicked or transferred. The
# forwarder runs at log_level warn here: its audit lines must still come.
. "$(dirname "$0")/lib.sh"
lab_start --set forwarder.log_level=warn
HC_PORT=$(free_port); RST_PORT=$(free_port); ECHO_PORT=$(free_port); SINK_PORT=$(free_port)
END_PORT=$(free_port); OUT_RST_PORT=$(free_port); OUT_END_PORT=$(free_port)
echo_server "$ECHO_PORT"
client_start alice alice --expose tcp:7001=127.0.0.1:$HC_PORT --expose tcp:7002=127.0.0.1:$RST_PORT \
    --expose tcp:7003=127.0.0.1:$ECHO_PORT --expose tcp:7004=127.0.0.1:$END_PORT \
    --forward 127.0.0.1:0:127.0.0.1:$SINK_PORT --forward 127.0.0.1:0:127.0.0.1:$OUT_RST_PORT \
    --forward 127.0.0.1:0:127.0.0.1:$OUT_END_PORT
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
ip=$(json_field "$LAB/alice.json" ip)
# alice's local ports for her three forwards, in the order given.
FWD=$(listen_port "$LAB/alice.json" 0); FWD_RST=$(listen_port "$LAB/alice.json" 1)
FWD_END=$(listen_port "$LAB/alice.json" 2)

# Device side half-closes first: the internal client reads the greeting and
# EOF, then still sends, and the device's service reads it.
bg python3 "$PEER" halfclose-server "$HC_PORT" "$LAB/hc.got"
wait_until 5000 listening "$HC_PORT" || fail "half-close server did not start"
out=$(timeout 10 python3 "$PEER" halfclose-client "$ip" 7001) || fail "half-close (device first): $out"
wait_until 3000 grep -q after-eof "$LAB/hc.got" || fail "the device's service did not read after its half-close"
ok "device half-closed first: internal side saw EOF and still sent ('after-eof' read at the device)"

# Internal side half-closes first: its request is answered after its FIN.
got=$(printf 'question' | timeout 10 ncat "$ip" 7003) || fail "half-close (internal first) failed"
[[ $got == question ]] || fail "after the internal side's FIN the answer was '$got'"
ok "internal side half-closed first: the device's answer still arrived"

# Same through --forward, device -> internal: whoami-like half-close.
bg python3 "$PEER" halfclose-server "$SINK_PORT" "$LAB/hc2.got"
wait_until 5000 listening "$SINK_PORT" || fail "server did not start"
out=$(timeout 10 python3 "$PEER" halfclose-client 127.0.0.1 "$FWD") || fail "half-close through --forward: $out"
wait_until 3000 grep -q after-eof "$LAB/hc2.got" || fail "the internal server did not read after its half-close"
ok "--forward: the internal server's half-close reached the device, the device's data still flowed"

# Resets: the device's service resets -> the internal client sees a reset.
bg python3 "$PEER" reset-server "$RST_PORT"
wait_until 5000 listening "$RST_PORT" || fail "reset server did not start"
out=$(timeout 10 python3 "$PEER" expect-reset "$ip" 7002) || fail "device reset not propagated: $out"
ok "a reset by the device's service reached the internal client"
# The internal client resets -> the device's service sees a reset.
bg python3 "$PEER" end-server "$END_PORT" "$LAB/end.got"
wait_until 5000 listening "$END_PORT" || fail "the device's end server did not start"
out=$(timeout 10 python3 "$PEER" reset-client "$ip" 7004) || fail "internal reset: $out"
wait_until 3000 grep -q . "$LAB/end.got" || fail "the device's service did not see its connection end"
[[ $(cat "$LAB/end.got") == reset ]] || fail "the device's service saw '$(cat "$LAB/end.got")', not a reset"
reset_audited() { audit_lines | grep '"port":7004' | grep -q reset; }
wait_until 3000 reset_audited || fail "the internal reset is not recorded: $(audit_lines | grep 7004 | tail -1)"
ok "a reset by the internal client reached the device's service (audit: $(audit_lines | grep '"port":7004' | tail -1 | sed 's/.*"reason":"\([^"]*\)".*/\1/'))"

# Through --forward: the internal server resets -> alice's local client
# sees a reset; alice's local client resets -> the internal server does.
bg python3 "$PEER" reset-server "$OUT_RST_PORT"
wait_until 5000 listening "$OUT_RST_PORT" || fail "the internal reset server did not start"
out=$(timeout 10 python3 "$PEER" expect-reset 127.0.0.1 "$FWD_RST") || fail "--forward, internal reset: $out"
bg python3 "$PEER" end-server "$OUT_END_PORT" "$LAB/out-end.got"
wait_until 5000 listening "$OUT_END_PORT" || fail "the internal end server did not start"
out=$(timeout 10 python3 "$PEER" reset-client 127.0.0.1 "$FWD_END") || fail "--forward, device reset: $out"
wait_until 3000 grep -q . "$LAB/out-end.got" || fail "the internal server did not see its connection end"
[[ $(cat "$LAB/out-end.got") == reset ]] || fail "the internal server saw '$(cat "$LAB/out-end.got")', not a reset"
ok "--forward: resets reach the other side both ways"

# Teardown: open streams die on both sides when the session ends.
# stream_torn VERB: a long-lived stream through 7003 ends within 2 s of VERB.
stream_torn() {
    local what=$1; shift
    python3 "$PEER" pinger "$ip" 7003 100 0.1 >"$LAB/ping.out" 2>&1 &
    local pid=$!
    wait_until 5000 bash -c "curl -sf $FORWARDER_STATUS_URL/status | grep -q '\"streams\":1,'" \
        || fail "$what: the long-lived stream did not open: $(cat "$LAB/ping.out")"
    "$@"
    local t0; t0=$(now_ms)
    wait_until 3000 bash -c "! kill -0 $pid 2>/dev/null" || fail "$what: the internal stream survived"
    local rc=0; wait "$pid" || rc=$?
    (( rc != 0 )) || fail "$what: the stream ended cleanly ($(cat "$LAB/ping.out"))"
    grep -q "^closed after\|reset" "$LAB/ping.out" || fail "$what: the internal side said $(cat "$LAB/ping.out")"
    ok "$what: the internal side's stream ended within $(( $(now_ms) - t0 )) ms ($(tail -1 "$LAB/ping.out"))"
}
stream_torn "kick" "$BIN/reachback-ctl" kick alice
wait_exit alice 5000 || fail "alice still runs after the kick"
client_start alice2 alice --expose tcp:7003=127.0.0.1:$ECHO_PORT
wait_until 10000 test -s "$LAB/alice2.json" || fail "alice2 did not log on"
ip=$(json_field "$LAB/alice2.json" ip)
wait_until 3000 bash -c "echo t | timeout 2 ncat $ip 7003 | grep -q t" || fail "alice2's port not reachable"
stream_torn "transfer" client_start alice3 alice --transfer yes --expose tcp:7003=127.0.0.1:$ECHO_PORT
wait_until 10000 test -s "$LAB/alice3.json" || fail "alice3 did not take the session"
wait_until 3000 bash -c "echo t | timeout 2 ncat $ip 7003 | grep -q t" || fail "alice3's port not reachable after the transfer"
ok "after the transfer the same address reaches the new device"
stream_torn "logoff" kill -INT "$CLIENT_PID_alice3"
wait_until 3000 bash -c "curl -sf $FORWARDER_STATUS_URL/status | grep -q '\"streams\":0,'" \
    || fail "streams left at the forwarder: $(curl -s "$FORWARDER_STATUS_URL/status")"
wait_until 3000 bash -c "curl -sf $EDGE_STATUS_URL/status | grep -q '\"streams\":0'" \
    || fail "streams left at the edge: $(curl -s "$EDGE_STATUS_URL/status")"
ok "no stream left at the forwarder or the edge"
! grep -q '"level":"info","svc":"forwarder"' "$LAB/logs/forwarder.log" || fail "the forwarder logged at info under log_level warn"
(( $(audit_lines | wc -l) >= 8 )) || fail "at log_level warn the forwarder wrote $(audit_lines | wc -l) audit lines"
ok "at log_level warn the forwarder logged no info line and still $(audit_lines | wc -l) audit lines"
