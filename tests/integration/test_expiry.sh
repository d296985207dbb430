#!/usr/bin/env bash
# Issue 3, point 6: a session whose edge stops refreshing it (the edge is
# SIGKILLed) expires after broker.session_timeout (3 s here; edges refresh
# every second): its DNS A and
# PTR records go NXDOMAIN, its lease is free again, and the broker's
# reachback_sessions_expired_total counts it. A session on a live edge does
# not expire.
. "$(dirname "$0")/lib.sh"
lab_start --edges 2 --set broker.session_timeout=3 --set edge.refresh_s=1
E1=$(edge_addr 1); E2=$(edge_addr 2)

client_start_at a1 alice "$E1"     # knows only edge1: it cannot resume
client_start_at b1 bob "$E2"
for d in a1 b1; do
    wait_until 10000 test -s "$LAB/$d.json" || fail "$d did not log on: $(cat "$LAB/$d.out")"
done
ip=$(json_field "$LAB/a1.json" ip); fqdn=$(json_field "$LAB/a1.json" fqdn)
sid=$(json_field "$LAB/a1.json" session)
ip_b=$(json_field "$LAB/b1.json" ip)
# expired: the counter summed over its labels; empty when absent.
expired() {
    curl -sf --max-time 2 "$BROKER_STATUS_URL/metrics" \
        | awk '$1 ~ /^reachback_sessions_expired_total([{]|$)/ { s += $2; n++ } END { if (n) print s + 0 }'
}
expired0=$(expired)
[[ -n $expired0 ]] || fail "the broker has no reachback_sessions_expired_total"
# Both live well past the timeout while their edges refresh them.
sleep 4.5
[[ $(rcli SISMEMBER rb:sessions:live "$sid") == 1 ]] || fail "alice's session expired while edge1 refreshed it"
[[ $(dig_short "$fqdn" A) == "$ip" ]] || fail "alice's name went away while edge1 refreshed her"
ok "sessions refreshed by their edges outlive the 3 s timeout"

"$ROOT/scripts/lab" kill --dir "$LAB" edge1
t_kill=$(now_ms)
wait_until 8000 bash -c "dig @$DNS_ADDR -p $DNS_PORT +time=1 +tries=1 $fqdn A | grep -q NXDOMAIN" \
    || fail "A $fqdn still answered 8 s after edge1 died"
dt=$(( $(now_ms) - t_kill ))
(( dt <= 6000 )) || fail "A $fqdn went away only after $dt ms (timeout 3 s)"
wait_until 1000 bash -c "dig @$DNS_ADDR -p $DNS_PORT +time=1 +tries=1 -x $ip | grep -q NXDOMAIN" \
    || fail "PTR $ip still answered"
ok "A and PTR NXDOMAIN $dt ms after edge1 was killed"

[[ $(rcli SISMEMBER rb:sessions:live "$sid") == 0 ]] || fail "session $sid still in rb:sessions:live"
[[ -z $(rcli GET rb:user:alice) ]] || fail "rb:user:alice still names $(rcli GET rb:user:alice)"
[[ $(rcli SISMEMBER rb:ip:leased "$ip") == 0 ]] || fail "$ip still leased"
[[ $(rcli SISMEMBER rb:ip:free "$ip") == 1 ]] || fail "$ip not free again"
[[ $(rcli EXISTS "rb:ip:lease:$ip") == 0 ]] || fail "rb:ip:lease:$ip still there"
ok "session gone from Redis, lease of $ip free"
deadline=$(( $(now_ms) + 2500 ))
until [[ $(expired) == $(( expired0 + 1 )) ]]; do
    (( $(now_ms) < deadline )) || fail "reachback_sessions_expired_total is $(expired), was $expired0"
    sleep 0.1
done
ok "reachback_sessions_expired_total counted it"

client_running b1 || fail "bob (on edge2) lost his connection"
[[ $(dig_short "bob.$DNS_SUFFIX" A) == "$ip_b" ]] || fail "bob's name went away"
[[ $(rcli SCARD rb:sessions:live) == 1 ]] || fail "Redis holds $(rcli SCARD rb:sessions:live) live sessions, want bob's"
ok "bob on edge2 is untouched"

# alice's device is told when it reaches an edge again: its session is gone.
"$ROOT/scripts/lab" revive --dir "$LAB" edge1
wait_exit a1 10000 || fail "a1 still runs after edge1 came back: $(cat "$LAB/a1.out")"
[[ $EXIT_RC == 16 || $EXIT_RC == 14 || $EXIT_RC == 8 ]] || fail "a1 exit $EXIT_RC, want 16, 14 or 8 ($(cat "$LAB/a1.out"))"
ok "alice's device ends with exit $EXIT_RC: $(tail -n 1 "$LAB/a1.out")"
