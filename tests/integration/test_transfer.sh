#!/usr/bin/env bash
# Issue 3, point 1: alice's first device dies without logging off; a second
# device is offered the session. --transfer yes takes it with the same
# intranet IP and DNS name; asked at a terminal, the prompt names the old
# device and says the offer expires in 2 minutes; "n" (or --transfer no, or
# no terminal to ask) declines with exit 10 and changes nothing.
. "$(dirname "$0")/lib.sh"
lab_start

client_start dev1 alice
wait_until 10000 test -s "$LAB/dev1.json" || fail "alice did not log on: $(cat "$LAB/dev1.out")"
ip=$(json_field "$LAB/dev1.json" ip)
fqdn=$(json_field "$LAB/dev1.json" fqdn)
sid1=$(json_field "$LAB/dev1.json" session)
ok "dev1: alice on $ip $fqdn"

# The laptop dies: no logoff reaches the edge.
kill -KILL "$CLIENT_PID_dev1"
wait "$CLIENT_PID_dev1" 2>/dev/null || true

# Asked at a terminal: the prompt tells where the session is, and "n" declines.
pty_client_start dev2 alice "$EDGE_ADDR" --transfer ask
wait_until 10000 grep -qi "transfer" "$LAB/dev2.out" || fail "no transfer prompt: $(cat "$LAB/dev2.out")"
sleep 0.3   # the rest of the prompt
grep -q "dev1" "$LAB/dev2.out" || fail "the prompt does not name the old device dev1: $(cat "$LAB/dev2.out")"
grep -qi "2 minutes" "$LAB/dev2.out" || fail "the prompt does not say the offer expires in 2 minutes: $(cat "$LAB/dev2.out")"
ok "prompt: $(tr -d '\r' <"$LAB/dev2.out" | grep -v '^$' | tr '\n' ' ')"
pty_send dev2 n
wait_exit dev2 5000 || fail "dev2 still runs after answering n"
[[ $EXIT_RC == 10 ]] || fail "answering n: exit $EXIT_RC, want 10 ($(cat "$LAB/dev2.out"))"
[[ ! -e "$LAB/dev2.json" ]] || fail "dev2 wrote a status file after declining"
[[ $(rcli GET rb:user:alice) == "$sid1" ]] || fail "declining changed alice's session ($(rcli GET rb:user:alice), was $sid1)"
[[ $(dig_short "$fqdn" A) == "$ip" ]] || fail "declining changed DNS: $(dig_short "$fqdn" A)"
ok "answered n: exit 10, session $sid1 unchanged"

# --transfer no, and no terminal at all: declined the same way.
for how in "--transfer no" ""; do
    rc=0
    # shellcheck disable=SC2086
    "$BIN/reachback-client" connect --server "$EDGE_ADDR" --ca "$CA" --user alice \
        --password-file "$USER_ALICE_PASSWORD_FILE" --device dev9 $how </dev/null >"$LAB/no.out" 2>&1 || rc=$?
    [[ $rc == 10 ]] || fail "'${how:-no terminal}': exit $rc, want 10 ($(cat "$LAB/no.out"))"
    [[ $(rcli GET rb:user:alice) == "$sid1" ]] || fail "'${how:-no terminal}' changed alice's session"
done
ok "--transfer no and no terminal: exit 10, nothing changed"

# --transfer yes: the same address and name, a new session; DNS keeps
# answering with the address the whole time.
client_start dev3 alice --transfer yes
t0=$(now_ms)
while [[ ! -s "$LAB/dev3.json" ]]; do
    (( $(now_ms) - t0 < 10000 )) || fail "dev3 did not take the session: $(cat "$LAB/dev3.out")"
    a=$(dig_short "$fqdn" A)
    [[ $a == "$ip" ]] || fail "during the transfer A $fqdn answered '$a', not $ip"
    sleep 0.05
done
[[ $(json_field "$LAB/dev3.json" ip) == "$ip" ]] || fail "dev3 got $(json_field "$LAB/dev3.json" ip), not $ip"
[[ $(json_field "$LAB/dev3.json" fqdn) == "$fqdn" ]] || fail "dev3 got $(json_field "$LAB/dev3.json" fqdn), not $fqdn"
sid3=$(json_field "$LAB/dev3.json" session)
[[ -n $sid3 && $sid3 != "$sid1" ]] || fail "dev3 holds session '$sid3' (old one was $sid1)"
[[ $(rcli GET rb:user:alice) == "$sid3" ]] || fail "Redis names session $(rcli GET rb:user:alice) for alice, not $sid3"
[[ $(rcli HGET "rb:session:$sid3" device) == dev3 ]] || fail "the session's device is not dev3"
[[ $(rcli SISMEMBER rb:sessions:live "$sid1") == 0 ]] || fail "the old session $sid1 is still live"
[[ $(rcli HGET "rb:ip:lease:$ip" session) == "$sid3" ]] || fail "the lease of $ip is not held by $sid3"
ok "--transfer yes: dev3 has $ip $fqdn, session $sid1 -> $sid3"
wait_until 1000 bash -c "[[ \$(dig @$DNS_ADDR -p $DNS_PORT +short +time=1 +tries=1 -x $ip) == $fqdn. ]]" \
    || fail "PTR $ip: '$(dig_short -x "$ip")'"
[[ $(dig_short "$fqdn" A) == "$ip" ]] || fail "A $fqdn: '$(dig_short "$fqdn" A)'"
ok "DNS follows: A and PTR still $fqdn <-> $ip"

# A clean logoff of the new device ends it at once.
kill -INT "$CLIENT_PID_dev3"
wait_exit dev3 5000 || fail "dev3 did not exit on SIGINT"
[[ $EXIT_RC == 0 ]] || fail "dev3 logoff: exit $EXIT_RC"
wait_until 1000 bash -c "dig @$DNS_ADDR -p $DNS_PORT +time=1 +tries=1 $fqdn A | grep -q NXDOMAIN" \
    || fail "A $fqdn still answered after logoff"
ok "logoff after transfer: NXDOMAIN"
