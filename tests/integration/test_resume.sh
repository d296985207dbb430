#!/usr/bin/env bash
# Issue 3, point 5: devices whose edge dies come back on another edge with
# their resume token: the same session and address, no prompt. A device
# whose session was transferred while it was away is refused (exit 16, or a
# fresh offer it cannot answer: exit 10) and changes nothing. The absolute
# session timeout closes a connected device with "session expired" (14).
. "$(dirname "$0")/lib.sh"
lab_start --edges 2
E1=$(edge_addr 1); E2=$(edge_addr 2)

# alice and bob on edge1, both knowing edge2; carol on edge2. alice
# exposes an echo service.
ECHO_PORT=$(free_port)
echo_server "$ECHO_PORT"
client_start_at a1 alice "$E1 $E2" --expose "tcp:7005=127.0.0.1:$ECHO_PORT"
client_start_at b1 bob "$E1 $E2"
client_start_at c1 carol "$E2 $E1"
for d in a1 b1 c1; do
    wait_until 10000 test -s "$LAB/$d.json" || fail "$d did not log on: $(cat "$LAB/$d.out")"
done
ip_a=$(json_field "$LAB/a1.json" ip); sid_a=$(json_field "$LAB/a1.json" session)
ip_b=$(json_field "$LAB/b1.json" ip); sid_b=$(json_field "$LAB/b1.json" session)
wait_until 2500 bash -c "curl -sf $EDGE1_STATUS_URL/status | grep -q '\"sessions\":2'" \
    || fail "edge1 does not carry 2 sessions: $(curl -s "$EDGE1_STATUS_URL/status")"
ok "alice and bob on edge1, carol on edge2"

# A stream to alice's echo stays open across her edge's death: 6 bytes
# each way before it. The stream dies with the old connection; its audit
# line still counts them.
bg bash -c "{ printf 'hello\n'; sleep 20; } 2>/dev/null | ncat '$ip_a' 7005 >'$LAB/hold.out' 2>&1"
wait_until 3000 grep -q hello "$LAB/hold.out" || fail "no echo through alice's port 7005"

"$ROOT/scripts/lab" kill --dir "$LAB" edge1
t_kill=$(now_ms)
wait_until 10000 bash -c "curl -sf $EDGE2_STATUS_URL/status | grep -q '\"sessions\":3'" \
    || fail "edge2 does not carry the 3 sessions: $(curl -s "$EDGE2_STATUS_URL/status")"
ok "alice and bob resumed on edge2 within $(( $(now_ms) - t_kill )) ms"
for d in a1 b1 c1; do client_running "$d" || fail "$d exited: $(cat "$LAB/$d.out")"; done
[[ $(json_field "$LAB/a1.json" session) == "$sid_a" && $(json_field "$LAB/a1.json" ip) == "$ip_a" ]] \
    || fail "alice's session or address changed: $(cat "$LAB/a1.json")"
[[ $(json_field "$LAB/b1.json" session) == "$sid_b" && $(json_field "$LAB/b1.json" ip) == "$ip_b" ]] \
    || fail "bob's session or address changed: $(cat "$LAB/b1.json")"
[[ $(rcli GET rb:user:alice) == "$sid_a" ]] || fail "Redis: alice's session is $(rcli GET rb:user:alice)"
[[ $(rcli HGET "rb:session:$sid_a" edge) == edge2 ]] || fail "Redis: alice's session is on $(rcli HGET "rb:session:$sid_a" edge)"
[[ $(dig_short "alice.$DNS_SUFFIX" A) == "$ip_a" ]] || fail "DNS lost alice"
! grep -qi "transfer" "$LAB/a1.out" || fail "alice was asked about a transfer: $(cat "$LAB/a1.out")"
ok "same sessions and addresses, no prompt; Redis says edge2; DNS unchanged"
wait_until 5000 bash -c "grep '\"event\":\"audit\"' '$LAB/logs/forwarder.log' | grep -q '\"port\":7005'" \
    || fail "no audit line for the stream that died with edge1"
line=$(audit_lines | grep '"port":7005' | tail -1)
grep -q '"verdict":"allowed","bytes_to_device":6,"bytes_from_device":6' <<<"$line" \
    || fail "the stream's audit line lost its bytes: $line"
grep -q '"reason":"the session moved to another edge"' <<<"$line" \
    || fail "the stream did not end by the move (the case under test): $line"
ok "the stream cut by the move is audited with its bytes ($(sed 's/.*"reason":"\([^"]*\)".*/\1/' <<<"$line"))"
"$ROOT/scripts/lab" revive --dir "$LAB" edge1

# alice's device is frozen; its edge dies under it; meanwhile a second
# device takes the session over. When the first wakes up, its token no
# longer opens anything.
client_start_at a2 alice "$E1" --transfer yes   # a1 is on edge2 now
wait_until 10000 test -s "$LAB/a2.json" || fail "a2 did not take over: $(cat "$LAB/a2.out")"
wait_exit a1 1000 || fail "a1 not closed by the transfer"
sid_a2=$(json_field "$LAB/a2.json" session)
kill -INT "$CLIENT_PID_a2"; wait_exit a2 5000 || true

client_start_at a3 alice "$E1 $E2"
wait_until 10000 test -s "$LAB/a3.json" || fail "a3 did not log on: $(cat "$LAB/a3.out")"
sid_a3=$(json_field "$LAB/a3.json" session)
kill -STOP "$CLIENT_PID_a3"
"$ROOT/scripts/lab" kill --dir "$LAB" edge1
client_start_at a4 alice "$E2" --transfer yes
wait_until 10000 test -s "$LAB/a4.json" || { kill -CONT "$CLIENT_PID_a3"; fail "a4 did not take over: $(cat "$LAB/a4.out")"; }
sid_a4=$(json_field "$LAB/a4.json" session)
kill -CONT "$CLIENT_PID_a3"
wait_exit a3 10000 || fail "a3 still runs 10 s after waking up with a stale token: $(cat "$LAB/a3.out")"
[[ $EXIT_RC == 16 || $EXIT_RC == 10 ]] || fail "a3 exit $EXIT_RC, want 16 (resume refused) or 10 ($(cat "$LAB/a3.out"))"
client_running a4 || fail "a4 lost the session to a stale token: $(cat "$LAB/a4.out")"
[[ $(rcli GET rb:user:alice) == "$sid_a4" ]] || fail "alice's session is $(rcli GET rb:user:alice), not a4's $sid_a4"
ok "a replaced device's token is refused (a3 exit $EXIT_RC; sessions $sid_a2, $sid_a3 -> $sid_a4 stays)"
"$ROOT/scripts/lab" revive --dir "$LAB" edge1

# A logoff ends the token too: the session is gone for good.
kill -INT "$CLIENT_PID_a4"; wait_exit a4 5000 || fail "a4 did not log off"
[[ $(rcli EXISTS "rb:session:$sid_a4") == 0 || $(rcli SISMEMBER rb:sessions:live "$sid_a4") == 0 ]] \
    || fail "session $sid_a4 still live after logoff"
ok "logoff ended a4's session"

# The absolute timeout: a lab whose sessions live 3 s at most.
kill -INT "$CLIENT_PID_b1" "$CLIENT_PID_c1"
wait_exit b1 5000 && wait_exit c1 5000 || fail "bob or carol did not log off"
"$ROOT/scripts/lab" stop --dir "$LAB" >/dev/null 2>&1
lab_start --set broker.session_max_lifetime=3
client_start x1 alice
wait_until 10000 test -s "$LAB/x1.json" || fail "x1 did not log on: $(cat "$LAB/x1.out")"
t0=$(now_ms)
wait_exit x1 8000 || fail "x1 still connected 8 s into a 3 s lifetime"
dt=$(( $(now_ms) - t0 ))
[[ $EXIT_RC == 14 ]] || fail "x1 exit $EXIT_RC, want 14 ($(cat "$LAB/x1.out"))"
grep -qi "expired" "$LAB/x1.out" || fail "x1 did not say the session expired: $(cat "$LAB/x1.out")"
wait_until 2000 bash -c "dig @$DNS_ADDR -p $DNS_PORT +time=1 +tries=1 alice.$DNS_SUFFIX A | grep -q NXDOMAIN" \
    || fail "alice's name outlived her session"
ok "session_max_lifetime=3: closed after ${dt} ms with exit 14, name gone"
