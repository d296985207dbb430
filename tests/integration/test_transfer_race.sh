#!/usr/bin/env bash
# Issue 3, point 4: devices 2, 3 and 4 (on two edges) are offered alice's
# session and accept at nearly the same moment. Exactly one ends up holding
# it (the last accept the broker saw: the one Redis names), the other two
# end with "replaced by a newer logon" (exit 12), device 1 with "session
# transferred" (exit 11); at no time do two devices hold the session for a
# second or more.
. "$(dirname "$0")/lib.sh"
lab_start --edges 2
E1=$(edge_addr 1); E2=$(edge_addr 2)

client_start_at dev1 alice "$E1"
wait_until 10000 test -s "$LAB/dev1.json" || fail "alice did not log on: $(cat "$LAB/dev1.out")"
ip=$(json_field "$LAB/dev1.json" ip)

pty_client_start dev2 alice "$E1" --transfer ask
pty_client_start dev3 alice "$E2" --transfer ask
pty_client_start dev4 alice "$E2" --transfer ask
for d in dev2 dev3 dev4; do
    wait_until 10000 grep -qi "transfer" "$LAB/$d.out" || fail "$d got no offer: $(cat "$LAB/$d.out")"
done
sleep 0.3
ok "three offers shown"
for d in dev2 dev3 dev4; do pty_send "$d" y; done
t0=$(now_ms)

# Sample who holds the session (a device holds it while its status file
# exists) until only one is left and the others have exited.
over_since=0 max_over=0
while :; do
    holders=0 running=0
    for d in dev1 dev2 dev3 dev4; do
        client_running "$d" && running=$((running + 1)) && [[ -s "$LAB/$d.json" ]] && holders=$((holders + 1))
    done
    now=$(now_ms)
    if (( holders > 1 )); then
        (( over_since )) || over_since=$now
        (( now - over_since > max_over )) && max_over=$(( now - over_since ))
        (( now - over_since < 1000 )) || fail "$holders devices held alice's session for 1 s"
    else
        over_since=0
    fi
    (( running <= 1 )) && break
    (( now - t0 < 10000 )) || fail "$running devices still run 10 s after the accepts"
    sleep 0.02
done
ok "at most one device held the session except for ${max_over} ms"

winner="" n11=0 n12=0
for d in dev1 dev2 dev3 dev4; do
    if client_running "$d"; then winner=$d; continue; fi
    wait_exit "$d" 100 || true
    case $EXIT_RC in
        11) n11=$((n11 + 1)); grep -q "session transferred to another device" "$LAB/$d.out" \
                || fail "$d exit 11 without the message: $(cat "$LAB/$d.out")" ;;
        12) n12=$((n12 + 1)); grep -q "replaced by a newer logon" "$LAB/$d.out" \
                || fail "$d exit 12 without the message: $(cat "$LAB/$d.out")" ;;
        *) fail "$d exit $EXIT_RC: $(cat "$LAB/$d.out")" ;;
    esac
done
[[ -n $winner && $winner != dev1 ]] || fail "no new device holds the session"
(( n11 == 1 && n12 == 2 )) || fail "exits: $n11 x 11 (want 1, dev1), $n12 x 12 (want 2)"
ok "$winner holds the session; dev1 exit 11; the two others exit 12"

sid=$(json_field "$LAB/$winner.json" session)
[[ $(rcli GET rb:user:alice) == "$sid" ]] || fail "Redis names $(rcli GET rb:user:alice), the winner holds $sid"
[[ $(rcli HGET "rb:session:$sid" device) == "$winner" ]] || fail "the session's device is $(rcli HGET "rb:session:$sid" device)"
[[ $(json_field "$LAB/$winner.json" ip) == "$ip" ]] || fail "$winner has another address"
[[ $(rcli SCARD rb:sessions:live) == 1 ]] || fail "Redis holds $(rcli SCARD rb:sessions:live) live sessions"
[[ $(rcli HGET "rb:ip:lease:$ip" session) == "$sid" ]] || fail "the lease of $ip is held by $(rcli HGET "rb:ip:lease:$ip" session)"
[[ $(dig_short "alice.$DNS_SUFFIX" A) == "$ip" ]] || fail "DNS lost alice"
ok "Redis, lease and DNS agree: $winner, $sid, $ip"
