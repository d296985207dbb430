#!/usr/bin/env bash
# Issue 4, point 2: a port alice does not expose, a source the policy does
# not allow, and a device whose local service is down all get a refused
# connection at once (RST), never a hang; a denied UDP source is dropped and
# counted. The policy is reloaded on SIGHUP without dropping live
# connections. Rules name target groups and ports (alice is in helpdesk).
. "$(dirname "$0")/lib.sh"
lab_start --user-groups alice=helpdesk
TCP_PORT=$(free_port); DEAD_PORT=$(free_port); UDP_PORT=$(free_port)
echo_server "$TCP_PORT"
udp_echo "$UDP_PORT"
client_start alice alice --expose tcp:5900=127.0.0.1:$TCP_PORT --expose tcp:5901=127.0.0.1:$TCP_PORT \
    --expose tcp:6000=127.0.0.1:$DEAD_PORT --expose udp:5353=127.0.0.1:$UDP_PORT
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
ip=$(json_field "$LAB/alice.json" ip)
wait_until 3000 bash -c "curl -sf $FORWARDER_STATUS_URL/status | grep -q '\"attached_sessions\":1'" \
    || fail "not attached"

# refused_fast WHAT HOST PORT [ncat args]: the connection fails within 1 s
# with a refusal or a reset, not a timeout.
refused_fast() {
    local what=$1 t0 out rc=0; shift
    t0=$(now_ms)
    out=$(echo x | timeout 5 ncat "$@" 2>&1) || rc=$?
    local dt=$(( $(now_ms) - t0 ))
    (( rc != 0 )) || fail "$what: the connection succeeded ($out)"
    [[ $out == *"refused"* || $out == *"reset"* ]] || fail "$what: '$out' (rc $rc)"
    (( dt < 1000 )) || fail "$what: took $dt ms"
    ok "$what: '${out##*: }' after $dt ms"
}

refused_fast "port 7000, not exposed" "$ip" 7000
inbound() { metric "$FORWARDER_STATUS_URL" "reachback_forwarder_inbound_total{verdict=\"$1\"}"; }
allowed0=$(inbound allowed); refused0=$(inbound refused)
refused_fast "port 6000, exposed but the device's service is down" "$ip" 6000
audit_lines | grep -q '"port":6000,"verdict":"refused"' || fail "no 'refused' audit line for 6000"
refused_rose() { local r; r=$(inbound refused); (( ${r%.*} > ${refused0%.*} )); }
wait_until 2000 refused_rose || fail "inbound_total{refused} did not rise ($refused0 -> $(inbound refused))"
[[ $(inbound allowed) == "$allowed0" ]] || fail "a connection the device refused was also counted allowed ($allowed0 -> $(inbound allowed))"
ok "audit line and metric: refused by the device (and not counted allowed)"

# A live connection, then a policy that allows only 127.0.0.2: SIGHUP.
bg python3 "$PEER" pinger "$ip" 5900 20 0.1
PINGER=$BG_PID
# The reload must come after its connection is up (a slow start of python
# under load would otherwise connect under the new policy).
wait_until 5000 bash -c "curl -sf $FORWARDER_STATUS_URL/status | grep -q '\"streams\":1,'" \
    || fail "the long-lived connection did not open"
cat > "$LAB/conf/policy.conf" <<'POL'
# only 127.0.0.2 may reach devices
allow 127.0.0.2 * * any
POL
reload_policy
denied0=$(inbound denied)
refused_fast "source 127.0.0.1 after the reload (denied)" "$ip" 5900
audit_lines | grep -q '"src":"127.0.0.1:[0-9]*",.*"port":5900,"verdict":"denied"' \
    || fail "no 'denied' audit line: $(audit_lines | tail -2)"
[[ $(( $(inbound denied | cut -d. -f1) - ${denied0%.*} )) == 1 ]] \
    || fail "inbound_total{denied} went from $denied0 to $(inbound denied), want one more"
got=$(echo allowed | timeout 5 ncat -s 127.0.0.2 "$ip" 5900) || true
[[ $got == allowed ]] || fail "source 127.0.0.2 was not let through ('$got')"
ok "source 127.0.0.2 allowed by the new policy"
wait "$PINGER" || fail "the connection opened before the reload was dropped"
ok "a connection opened before SIGHUP kept working (20 pings over 2 s)"

# UDP from a denied source: nothing delivered, the drop counted.
before=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_udp_dropped_total)
got=$(echo "udp" | timeout 3 socat -T 1 - UDP4:"$ip":5353,bind=127.0.0.1) || true
[[ -z $got ]] || fail "a denied UDP source got '$got'"
wait_until 2000 bash -c "[[ \$(curl -sf $FORWARDER_STATUS_URL/metrics | awk '\$1==\"reachback_forwarder_udp_dropped_total\"{print \$2}') > ${before:-0} ]]" \
    || fail "udp_dropped_total did not grow from ${before:-0}"
got=$(echo "udp-ok" | timeout 3 socat -T 1 - UDP4:"$ip":5353,bind=127.0.0.2) || true
[[ $got == udp-ok ]] || fail "an allowed UDP source got '$got'"
ok "UDP: denied source dropped and counted, allowed source answered"

# A bad policy file on SIGHUP keeps the old one.
echo "allow nonsense" > "$LAB/conf/policy.conf"
kill -HUP "$(cat "$LAB/run/forwarder.pid")"
wait_until 3000 grep -q 'policy.conf:1' "$LAB/logs/forwarder.log" || fail "bad policy not reported"
got=$(echo still | timeout 5 ncat -s 127.0.0.2 "$ip" 5900) || true
[[ $got == still ]] || fail "the old policy was lost after a bad reload"
ok "a bad policy file is reported with its line and the old policy stays"
rc=0; out=$("$BIN/reachback-forwarder" --check-config --config "$LAB/conf/forwarder.conf" 2>&1) || rc=$?
[[ $rc == 1 && $out == *"policy.conf:1: "* ]] || fail "--check-config on a bad policy: rc $rc, '$out'"
ok "--check-config names the policy file's bad line"

# Rules by target group and port: 127.0.0.3 may reach helpdesk's port 5900
# (alice's, not her 5901); 127.0.0.4 only finance's devices.
cat > "$LAB/conf/policy.conf" <<'POL'
allow 127.0.0.3 group:helpdesk 5900 tcp
allow 127.0.0.4 group:finance  *    any
POL
reload_policy
got=$(echo helpdesk | timeout 5 ncat -s 127.0.0.3 "$ip" 5900) || true
[[ $got == helpdesk ]] || fail "127.0.0.3 -> helpdesk alice's 5900 answered '$got'"
refused_fast "127.0.0.3 to alice's 5901, a port its rule does not name" -s 127.0.0.3 "$ip" 5901
refused_fast "127.0.0.4 to alice, not in its rule's group" -s 127.0.0.4 "$ip" 5900
ok "group:helpdesk 5900 lets 127.0.0.3 reach alice's 5900 only; group:finance does not match her"
