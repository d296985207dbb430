#!/usr/bin/env bash
# A DNS service restarted mid-session (and one started after the sessions)
# answers again from the broker's snapshot; it forwards nothing without an
# upstream (REFUSED).
. "$(dirname "$0")/lib.sh"
lab_start
client_start d1 alice
client_start d2 bob
wait_until 10000 test -s "$LAB/d1.json" || fail "alice did not log on"
wait_until 10000 test -s "$LAB/d2.json" || fail "bob did not log on"
ip1=$(json_field "$LAB/d1.json" ip); ip2=$(json_field "$LAB/d2.json" ip)
wait_until 1000 bash -c "[[ \$(dig @$DNS_ADDR -p $DNS_PORT +short alice.$DNS_SUFFIX) == $ip1 ]]" || fail "no A before restart"

"$ROOT/scripts/lab" kill --dir "$LAB" dns
! dig @"$DNS_ADDR" -p "$DNS_PORT" +time=1 +tries=1 "alice.$DNS_SUFFIX" A >/dev/null 2>&1 \
    || fail "something still answers on the DNS port"
ok "dns killed"
# While it is down, carol logs on: the restarted service must learn of her
# from the snapshot, not from an event it never saw.
client_start d3 carol
wait_until 10000 test -s "$LAB/d3.json" || fail "carol did not log on"
ip3=$(json_field "$LAB/d3.json" ip)
"$ROOT/scripts/lab" revive --dir "$LAB" dns
[[ $(dig_short "alice.$DNS_SUFFIX" A) == "$ip1" ]] || fail "alice not answered after restart"
[[ $(dig_short "bob.$DNS_SUFFIX" A) == "$ip2" ]] || fail "bob not answered after restart"
[[ $(dig_short "carol.$DNS_SUFFIX" A) == "$ip3" ]] || fail "carol (logged on while dns was down) not answered"
[[ $(dig_short -x "$ip3") == "carol.$DNS_SUFFIX." ]] || fail "PTR of carol not answered"
ok "restarted dns answers alice, bob and carol from the snapshot"
curl -sf "$DNS_STATUS_URL/status" | grep -q '"snapshots":[1-9]' || fail "dns /status shows no snapshot: $(curl -s "$DNS_STATUS_URL/status")"

[[ $(dig_status example.com A) == REFUSED ]] || fail "a name outside the zone is not REFUSED without upstream"
ok "outside names REFUSED"
