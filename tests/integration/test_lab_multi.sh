#!/usr/bin/env bash
# Issue 3, point 9: scripts/lab start --edges 3 --brokers 2. lab.env lists
# every edge (EDGE_ADDRS) and every instance's status URL; each edge logs
# users on through the brokers; with broker1 dead, logons go through broker2
# and DNS keeps following; --set reaches one instance or every instance of a
# kind; "edge" names edge1 in kill and revive.
. "$(dirname "$0")/lib.sh"
lab_start --edges 3 --brokers 2 --set broker2.log_level=debug --set edge.keepalive_s=20
read -ra edges <<<"$EDGE_ADDRS"
(( ${#edges[@]} == 3 )) || fail "EDGE_ADDRS: '$EDGE_ADDRS'"
[[ ${edges[0]} == "$EDGE_ADDR" ]] || fail "EDGE_ADDR is not the first of EDGE_ADDRS"
[[ -n ${EDGE3_STATUS_URL:-} && -n ${BROKER2_STATUS_URL:-} && $EDGE_STATUS_URL == "$EDGE1_STATUS_URL" ]] \
    || fail "status URLs missing from lab.env"
[[ $ADMIN_URL == "$BROKER1_STATUS_URL" && $BROKER_STATUS_URL == "$BROKER1_STATUS_URL" ]] || fail "ADMIN_URL is not broker1's"
[[ $(awk '$1 == "log_level" { print $3 }' "$LAB/conf/broker2.conf") == debug && \
   $(awk '$1 == "log_level" { print $3 }' "$LAB/conf/broker1.conf") == info ]] || fail "--set broker2.x reached the wrong file"
for i in 1 2 3; do
    [[ $(awk '$1 == "keepalive_s" { print $3 }' "$LAB/conf/edge$i.conf") == 20 ]] || fail "--set edge.x missed edge$i"
    grep -q "^broker_endpoint = .*,.*" "$LAB/conf/edge$i.conf" || fail "edge$i does not know both brokers"
done
"$ROOT/scripts/lab" status --dir "$LAB" >"$LAB/status.out" || fail "lab status: $(cat "$LAB/status.out")"
(( $(grep -c yes "$LAB/status.out") == 9 )) || fail "lab status: $(cat "$LAB/status.out")"
ok "3 edges, 2 brokers, all ready; lab.env and --set as documented"

users=(alice bob carol)
for i in 0 1 2; do client_start_at "d$i" "${users[i]}" "${edges[i]}"; done
for i in 0 1 2; do
    wait_until 10000 test -s "$LAB/d$i.json" || fail "${users[i]} on edge$((i + 1)): $(cat "$LAB/d$i.out")"
    ip=$(json_field "$LAB/d$i.json" ip)
    wait_until 1000 bash -c "[[ \$(dig @$DNS_ADDR -p $DNS_PORT +short +time=1 +tries=1 ${users[i]}.$DNS_SUFFIX A) == $ip ]]" \
        || fail "DNS does not answer ${users[i]} -> $ip"
done
for i in 1 2 3; do
    v="EDGE${i}_STATUS_URL"
    wait_until 2500 bash -c "curl -sf ${!v}/status | grep -q '\"sessions\":1'" \
        || fail "edge$i /status: $(curl -s "${!v}/status")"
done
ok "one user on each edge, names in DNS"

# Without broker1, logons and logoffs go through broker2.
"$ROOT/scripts/lab" kill --dir "$LAB" broker1
kill -INT "$CLIENT_PID_d0"
wait_exit d0 5000 && [[ $EXIT_RC == 0 ]] || fail "alice could not log off without broker1: $(cat "$LAB/d0.out")"
wait_until 5000 bash -c "dig @$DNS_ADDR -p $DNS_PORT +time=1 +tries=1 alice.$DNS_SUFFIX A | grep -q NXDOMAIN" \
    || fail "DNS did not follow alice's logoff through broker2"
client_start_at e0 alice "${edges[2]}"
wait_until 10000 test -s "$LAB/e0.json" || fail "alice could not log on without broker1: $(cat "$LAB/e0.out")"
wait_until 2000 bash -c "[[ \$(dig @$DNS_ADDR -p $DNS_PORT +short +time=1 +tries=1 alice.$DNS_SUFFIX A) == $(json_field "$LAB/e0.json" ip) ]]" \
    || fail "DNS did not learn alice's logon through broker2"
ok "broker1 down: logoff and logon through broker2, DNS follows"
"$ROOT/scripts/lab" revive --dir "$LAB" broker1

# "edge" is edge1.
pid1=$(cat "$LAB/run/edge1.pid")
"$ROOT/scripts/lab" kill --dir "$LAB" edge
! proc_running "$pid1" || fail "lab kill edge did not kill edge1"
[[ ! -e "$LAB/run/edge1.pid" ]] || fail "edge1.pid left behind"
"$ROOT/scripts/lab" revive --dir "$LAB" edge
curl -sf -o /dev/null "$EDGE1_STATUS_URL/readyz" || fail "edge1 not ready after revive"
ok "kill/revive 'edge' acts on edge1"
