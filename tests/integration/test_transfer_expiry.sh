#!/usr/bin/env bash
# Issue 3, point 3: a transfer offer is valid for broker.transfer_offer_ttl
# seconds (3 here). Accepting after that fails with "transfer offer expired"
# (exit 15) and the old session is left as it was.
. "$(dirname "$0")/lib.sh"
lab_start --set broker.transfer_offer_ttl=3

client_start dev1 alice
wait_until 10000 test -s "$LAB/dev1.json" || fail "alice did not log on: $(cat "$LAB/dev1.out")"
ip=$(json_field "$LAB/dev1.json" ip)
fqdn=$(json_field "$LAB/dev1.json" fqdn)
sid1=$(json_field "$LAB/dev1.json" session)

pty_client_start dev2 alice "$EDGE_ADDR" --transfer ask
wait_until 10000 grep -qi "transfer" "$LAB/dev2.out" || fail "no transfer prompt: $(cat "$LAB/dev2.out")"
t_prompt=$(now_ms)
sleep 0.2
grep -q "dev1" "$LAB/dev2.out" || fail "the prompt does not name dev1: $(cat "$LAB/dev2.out")"
ok "offered: $(tr -d '\r' <"$LAB/dev2.out" | grep -v '^$' | tr '\n' ' ')"

# Answer yes, 4 s after the offer: too late.
sleep "$(awk -v ms=$(( 4000 - ($(now_ms) - t_prompt) )) 'BEGIN { print (ms > 0 ? ms / 1000 : 0) }')"
pty_send dev2 y
wait_exit dev2 5000 || fail "dev2 still runs after a late yes: $(cat "$LAB/dev2.out")"
[[ $EXIT_RC == 15 ]] || fail "late yes: exit $EXIT_RC, want 15 ($(cat "$LAB/dev2.out"))"
grep -q "transfer offer expired" "$LAB/dev2.out" || fail "dev2 did not say the offer expired: $(cat "$LAB/dev2.out")"
[[ ! -e "$LAB/dev2.json" ]] || fail "dev2 wrote a status file"
ok "accepted after 4 s: exit 15, 'transfer offer expired'"

client_running dev1 || fail "dev1 was disconnected: $(cat "$LAB/dev1.out")"
[[ $(json_field "$LAB/dev1.json" session) == "$sid1" ]] || fail "dev1's session changed"
[[ $(rcli GET rb:user:alice) == "$sid1" ]] || fail "alice's session in Redis is $(rcli GET rb:user:alice), not $sid1"
[[ $(rcli HGET "rb:session:$sid1" device) == dev1 ]] || fail "the session's device changed"
[[ $(rcli HGET "rb:ip:lease:$ip" session) == "$sid1" ]] || fail "the lease of $ip moved"
[[ $(dig_short "$fqdn" A) == "$ip" ]] || fail "A $fqdn: '$(dig_short "$fqdn" A)'"
ok "the old session $sid1 on dev1 is unchanged ($ip $fqdn)"

# Within the time, the same answer works.
pty_client_start dev3 alice "$EDGE_ADDR" --transfer ask
wait_until 10000 grep -qi "transfer" "$LAB/dev3.out" || fail "no transfer prompt for dev3: $(cat "$LAB/dev3.out")"
sleep 0.5
pty_send dev3 y
wait_until 5000 test -s "$LAB/dev3.json" || fail "a yes in time did not transfer: $(cat "$LAB/dev3.out")"
[[ $(json_field "$LAB/dev3.json" ip) == "$ip" ]] || fail "dev3 got another address"
wait_exit dev1 1000 && [[ $EXIT_RC == 11 ]] || fail "dev1 not told of the transfer: $(cat "$LAB/dev1.out")"
ok "a yes within the 3 s transfers (dev1 exit 11)"
