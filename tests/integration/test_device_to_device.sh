#!/usr/bin/env bash
# Issue 4, point 4: bob, logged on too, reaches alice's exposed services by
# name and by intranet address through the gateway, under the same policy
# (a rule can deny bob -> alice while carol still gets through) and the
# same exposure rules (a port alice does not expose stays closed).
. "$(dirname "$0")/lib.sh"
lab_start
TCP_PORT=$(free_port)
echo_server "$TCP_PORT"
client_start alice alice --expose tcp:5900=127.0.0.1:$TCP_PORT
client_start bob bob --socks 127.0.0.1:0 --forward 127.0.0.1:0:alice.vpn.lab:5900
client_start carol carol --socks 127.0.0.1:0
for n in alice bob carol; do
    wait_until 10000 test -s "$LAB/$n.json" || fail "$n did not log on: $(cat "$LAB/$n.out")"
done
alice_ip=$(json_field "$LAB/alice.json" ip); bob_ip=$(json_field "$LAB/bob.json" ip)
# listen_ports lists the --forward ports, then the --socks ports.
BOB_FWD=$(listen_port "$LAB/bob.json" 0); BOB_SOCKS=$(listen_port "$LAB/bob.json" 1)
CAROL_SOCKS=$(listen_port "$LAB/carol.json" 0)

# By name through SOCKS (resolved by the gateway), by address too.
got=$(echo by-name | timeout 5 ncat --proxy-type socks5 --proxy 127.0.0.1:"$BOB_SOCKS" \
      --proxy-dns remote alice.vpn.lab 5900) || fail "bob -> alice.vpn.lab:5900 via SOCKS failed"
[[ $got == by-name ]] || fail "bob -> alice by name answered '$got'"
got=$(echo by-ip | timeout 5 ncat --proxy-type socks5 --proxy 127.0.0.1:"$BOB_SOCKS" \
      "$alice_ip" 5900) || fail "bob -> $alice_ip:5900 via SOCKS failed"
[[ $got == by-ip ]] || fail "bob -> alice by address answered '$got'"
got=$(echo fwd | timeout 5 ncat 127.0.0.1 "$BOB_FWD") || fail "bob's --forward to alice failed"
[[ $got == fwd ]] || fail "bob's --forward answered '$got'"
ok "bob reaches alice's port 5900 by name (SOCKS, --forward) and by address $alice_ip"
wait_until 2000 bash -c "grep '\"event\":\"audit\"' '$LAB/logs/forwarder.log' | grep -q '\"kind\":\"device\",.*\"src_user\":\"bob\",\"user\":\"alice\"'" \
    || fail "no device-to-device audit line: $(audit_lines | tail -2)"
line=$(audit_lines | grep '"kind":"device"' | head -1)
[[ $line == *"\"src\":\"$bob_ip:"* ]] || fail "the audit line's source is not bob's address: $line"
ok "audited as device-to-device: bob ($bob_ip) -> alice port 5900"
# In /metrics, each of bob's three connections is one outbound connection
# of his and one inbound of alice's.
fwd_metric() { metric "$FORWARDER_STATUS_URL" "$1" | cut -d. -f1; }
three_each() {
    [[ $(fwd_metric 'reachback_forwarder_inbound_total{verdict="allowed"}') == 3 &&
       $(fwd_metric 'reachback_forwarder_outbound_total{result="ok"}') == 3 ]]
}
wait_until 2000 three_each || fail "metrics: inbound allowed $(fwd_metric 'reachback_forwarder_inbound_total{verdict="allowed"}'), outbound ok $(fwd_metric 'reachback_forwarder_outbound_total{result="ok"}'), want 3 and 3"
ok "metrics: 3 inbound connections allowed at alice, 3 outbound ok from bob"

# Exposure: port 22 is not exposed by alice.
refused_within 2000 timeout 5 ncat --proxy-type socks5 --proxy 127.0.0.1:"$BOB_SOCKS" "$alice_ip" 22 \
    </dev/null >"$LAB/n1" 2>&1 || fail "bob -> alice's unexposed port 22, $ELAPSED_MS ms: $(cat "$LAB/n1")"
grep -qi "refused\|reset\|failed" "$LAB/n1" || fail "bob's refusal at port 22: $(cat "$LAB/n1")"
ok "alice's unexposed port 22 refused to bob in $ELAPSED_MS ms: $(tail -1 "$LAB/n1")"

# Policy: deny bob -> alice, carol still allowed.
cat > "$LAB/conf/policy.conf" <<'POL'
deny  user:bob     user:alice  *  any
allow 127.0.0.0/8  *           *  any
POL
reload_policy
refused_within 2000 timeout 5 ncat --proxy-type socks5 --proxy 127.0.0.1:"$BOB_SOCKS" \
    --proxy-dns remote alice.vpn.lab 5900 <<<denied >"$LAB/n2" 2>&1 \
    || fail "bob -> alice under the deny rule, $ELAPSED_MS ms: $(cat "$LAB/n2")"
! grep -q '^denied$' "$LAB/n2" || fail "bob still reaches alice: $(cat "$LAB/n2")"
grep -qi "not allowed\|ruleset\|refused\|reset" "$LAB/n2" || fail "bob's refusal: $(cat "$LAB/n2")"
got=$(echo carol | timeout 5 ncat --proxy-type socks5 --proxy 127.0.0.1:"$CAROL_SOCKS" \
      --proxy-dns remote alice.vpn.lab 5900) || fail "carol -> alice failed"
[[ $got == carol ]] || fail "carol -> alice answered '$got'"
ok "policy 'deny user:bob user:alice': bob refused in $ELAPSED_MS ms ($(tail -1 "$LAB/n2")), carol still gets through"
audit_lines | grep -q '"src_user":"bob".*"verdict":"denied"' || fail "no 'denied' audit line for bob"
ok "bob's denied attempt is audited"
