#!/usr/bin/env bash
# Logon gives alice an intranet IP from the pool and a DNS name; A and PTR
# answer within one second of logon and are NXDOMAIN within one second of
# logoff; SIGINT logs off cleanly with exit 0.
. "$(dirname "$0")/lib.sh"
lab_start

client_start dev1 alice
wait_until 10000 test -s "$LAB/dev1.json" || fail "alice did not log on: $(cat "$LAB/dev1.out")"
t_logon=$(now_ms)
ip=$(json_field "$LAB/dev1.json" ip)
fqdn=$(json_field "$LAB/dev1.json" fqdn)
[[ $(json_field "$LAB/dev1.json" user) == alice ]] || fail "status file user: $(cat "$LAB/dev1.json")"
[[ -n $(json_field "$LAB/dev1.json" session) ]] || fail "status file has no session"
[[ $fqdn == "alice.$DNS_SUFFIX" ]] || fail "fqdn '$fqdn' is not alice.$DNS_SUFFIX"
pool_prefix=${POOL%.0.0/16}
[[ $ip == "$pool_prefix".* ]] || fail "ip '$ip' is not in pool $POOL"
grep -q "$ip" "$LAB/dev1.out" || fail "client did not print its IP"
ok "alice logged on: $ip $fqdn"

wait_until 1000 bash -c "[[ \$(dig @$DNS_ADDR -p $DNS_PORT +short +time=1 +tries=1 $fqdn A) == $ip ]]" \
    || fail "A $fqdn not answered with $ip within 1 s of logon (got '$(dig_short "$fqdn" A)')"
ok "A $fqdn = $ip within $(( $(now_ms) - t_logon )) ms"
wait_until 1000 bash -c "[[ \$(dig @$DNS_ADDR -p $DNS_PORT +short +time=1 +tries=1 -x $ip) == $fqdn. ]]" \
    || fail "PTR $ip not answered with $fqdn within 1 s (got '$(dig_short -x "$ip")')"
ok "PTR $ip = $fqdn."
# Case-insensitive, and the name is authoritative.
[[ $(dig_short "ALICE.${DNS_SUFFIX^^}" A) == "$ip" ]] || fail "upper-case query not answered"
dig @"$DNS_ADDR" -p "$DNS_PORT" "$fqdn" A | grep -q "flags:.* aa" || fail "answer is not authoritative"
[[ $(dig_status "$fqdn" AAAA) == NOERROR && -z $(dig_short "$fqdn" AAAA) ]] || fail "AAAA is not NODATA"
ok "case-insensitive, authoritative, NODATA for AAAA"

# bob gets a different address.
client_start dev2 bob
wait_until 10000 test -s "$LAB/dev2.json" || fail "bob did not log on: $(cat "$LAB/dev2.out")"
ip_bob=$(json_field "$LAB/dev2.json" ip)
[[ $ip_bob != "$ip" ]] || fail "bob got alice's address $ip"
ok "bob got $ip_bob"

# The session is visible in the broker's and the edge's status.
# (the broker samples the session count from Redis once a second)
wait_until 2500 bash -c "curl -sf $BROKER_STATUS_URL/status | grep -q '\"sessions\":2'" \
    || fail "broker /status: $(curl -s "$BROKER_STATUS_URL/status")"
wait_until 2500 bash -c "curl -sf $EDGE_STATUS_URL/status | grep -q '\"sessions\":2'" \
    || fail "edge /status: $(curl -s "$EDGE_STATUS_URL/status")"
ok "broker and edge count 2 sessions"

kill -INT "$CLIENT_PID_dev1"
rc=0; wait "$CLIENT_PID_dev1" || rc=$?
t_logoff=$(now_ms)
[[ $rc == 0 ]] || fail "client exit code after SIGINT is $rc, not 0"
[[ ! -e "$LAB/dev1.json" ]] || fail "status file left behind after logoff"
ok "SIGINT logged off, exit 0"
wait_until 1000 bash -c "[[ \$(dig @$DNS_ADDR -p $DNS_PORT +time=1 +tries=1 $fqdn A | grep -c 'status: NXDOMAIN') == 1 ]]" \
    || fail "A $fqdn still answered 1 s after logoff"
wait_until 1000 bash -c "[[ \$(dig @$DNS_ADDR -p $DNS_PORT +time=1 +tries=1 -x $ip | grep -c 'status: NXDOMAIN') == 1 ]]" \
    || fail "PTR $ip still answered 1 s after logoff"
dig @"$DNS_ADDR" -p "$DNS_PORT" "$fqdn" A | grep -A1 "AUTHORITY SECTION" | grep -q SOA \
    || fail "NXDOMAIN without SOA in authority"
ok "A and PTR NXDOMAIN (with SOA) within $(( $(now_ms) - t_logoff )) ms of logoff"
[[ $(dig_short "bob.$DNS_SUFFIX" A) == "$ip_bob" ]] || fail "bob's name went away with alice's"

# alice logs on again: the same address (sticky).
client_start dev3 alice
wait_until 10000 test -s "$LAB/dev3.json" || fail "alice did not log on again: $(cat "$LAB/dev3.out")"
[[ $(json_field "$LAB/dev3.json" ip) == "$ip" ]] || fail "alice got $(json_field "$LAB/dev3.json" ip), not her previous $ip"
ok "alice got her previous address again"

# A second logon while a session exists gets a transfer offer; without a
# terminal to ask, the client declines it (exit 10) and the session stays.
rc=0
"$BIN/reachback-client" connect --server "$EDGE_ADDR" --ca "$CA" --user alice \
    --password-file "$USER_ALICE_PASSWORD_FILE" >"$LAB/dup.out" 2>&1 </dev/null || rc=$?
[[ $rc == 10 ]] || fail "second logon of alice without a terminal: exit $rc, want 10 ($(cat "$LAB/dup.out"))"
client_running dev3 || fail "alice's session went away when a second logon declined"
ok "second logon declined: $(tail -n1 "$LAB/dup.out")"

[[ $(metric "$DNS_STATUS_URL" 'reachback_dns_queries_total{rcode="NOERROR"}') != "" ]] || fail "no DNS query metrics"
ok "metrics present"
