#!/usr/bin/env bash
# Issue 3, point 2: alice's device 1 is still connected (on edge1) when
# device 2 (on edge2) takes the session over: within one second device 1
# prints "session transferred to another device" and exits 11; the same on
# one edge. A session that itself came from a transfer is transferred the
# same way when another device takes it with an offer for it ("replaced by
# a newer logon" is for the losers of accepts at the same moment, in
# test_transfer_race).
. "$(dirname "$0")/lib.sh"
lab_start --edges 2
E1=$(edge_addr 1); E2=$(edge_addr 2)

# transfer_check OLD NEW NEW_EDGE CODE TEXT: OLD is connected; NEW takes
# over on NEW_EDGE; OLD must print TEXT and exit CODE within 1 s.
transfer_check() {
    local old=$1 new=$2 edge=$3 want=$4 text=$5
    local v="CLIENT_PID_$old"
    client_start_at "$new" alice "$edge" --transfer yes
    wait_until 10000 test -s "$LAB/$new.json" || fail "$new did not take the session: $(cat "$LAB/$new.out")"
    local t_new; t_new=$(now_ms)
    wait_exit "$old" 1000 || fail "$old still runs 1 s after $new took the session: $(cat "$LAB/$old.out")"
    local dt=$(( $(now_ms) - t_new ))
    [[ $EXIT_RC == "$want" ]] || fail "$old exit $EXIT_RC, want $want ($(cat "$LAB/$old.out"))"
    grep -q "$text" "$LAB/$old.out" \
        || fail "$old did not say why: $(cat "$LAB/$old.out")"
    [[ ! -e "$LAB/$old.json" ]] || fail "$old left its status file"
    client_running "$new" || fail "$new died: $(cat "$LAB/$new.out")"
    ok "$old closed ${dt} ms after $new took the session (exit $want, '$text')"
}

client_start_at dev1 alice "$E1"
wait_until 10000 test -s "$LAB/dev1.json" || fail "alice did not log on: $(cat "$LAB/dev1.out")"
ip=$(json_field "$LAB/dev1.json" ip)

transfer_check dev1 dev2 "$E2" 11 "session transferred to another device"   # edge1 -> edge2
[[ $(json_field "$LAB/dev2.json" ip) == "$ip" ]] || fail "dev2 has another address"

# A fresh session on edge2, taken over on edge2.
kill -INT "$CLIENT_PID_dev2"
wait_exit dev2 5000 && [[ $EXIT_RC == 0 ]] || fail "dev2 did not log off"
client_start_at dev3 alice "$E2"
wait_until 10000 test -s "$LAB/dev3.json" || fail "dev3 did not log on: $(cat "$LAB/dev3.out")"
transfer_check dev3 dev4 "$E2" 11 "session transferred to another device"   # on one edge

# dev4's session came from a transfer; dev5 is offered it and takes it.
transfer_check dev4 dev5 "$E1" 11 "session transferred to another device"
[[ $(json_field "$LAB/dev5.json" ip) == "$ip" ]] || fail "dev5 has another address"

# Only the last device is carried by an edge.
wait_until 2000 bash -c "curl -sf $EDGE2_STATUS_URL/status | grep -q '\"sessions\":0'" \
    || fail "edge2 still carries a session: $(curl -s "$EDGE2_STATUS_URL/status")"
wait_until 2000 bash -c "curl -sf $EDGE1_STATUS_URL/status | grep -q '\"sessions\":1'" \
    || fail "edge1: $(curl -s "$EDGE1_STATUS_URL/status")"
[[ $(rcli SCARD rb:sessions:live) == 1 ]] || fail "Redis holds $(rcli SCARD rb:sessions:live) live sessions"
ok "one live session, on edge1, address $ip"
