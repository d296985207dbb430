#!/usr/bin/env bash
# A device's own UDP flows (--forward udp:...): bob reaches alice's exposed
# UDP port by name, asks an internal UDP server (which sees bob's intranet
# address), and asks the gateway's DNS with dig, all through UDP forwards;
# each local sender is a flow of its own; policy judges device-to-device
# flows; every flow is audited when it ends.
. "$(dirname "$0")/lib.sh"
lab_start
UDP_PORT=$(free_port); WHO_PORT=$(free_port)
udp_echo "$UDP_PORT"
# An internal server that answers every datagram with the sender's address.
bg socat -T 5 UDP4-RECVFROM:"$WHO_PORT",bind=127.0.0.1,reuseaddr,fork SYSTEM:'echo $SOCAT_PEERADDR'
client_start alice alice --expose udp:5353=127.0.0.1:$UDP_PORT
client_start bob bob --forward udp:127.0.0.1:0:alice.vpn.lab:5353 \
    --forward udp:127.0.0.1:0:127.0.0.1:$WHO_PORT --forward udp:0:$DNS_ADDR:$DNS_PORT
for n in alice bob; do
    wait_until 10000 test -s "$LAB/$n.json" || fail "$n did not log on: $(cat "$LAB/$n.out")"
done
alice_ip=$(json_field "$LAB/alice.json" ip); bob_ip=$(json_field "$LAB/bob.json" ip)
read -r TO_ALICE TO_WHO TO_DNS < <(sed -n 's/.*"listen_ports":\[\([0-9]*\),\([0-9]*\),\([0-9]*\)\].*/\1 \2 \3/p' "$LAB/bob.json")
[[ -n $TO_DNS ]] || fail "bob's status file has no three listen ports: $(cat "$LAB/bob.json")"

# udp_ask PORT TEXT [SRCPORT]: one datagram to bob's forward, the answer.
udp_ask() {
    local bind=127.0.0.1; [[ -n ${3:-} ]] && bind="127.0.0.1:$3"
    echo "$2" | timeout 5 socat -T 2 - UDP4:127.0.0.1:"$1",bind="$bind" || true
}
got=$(udp_ask "$TO_ALICE" d2d-one)
[[ $got == d2d-one ]] || fail "bob -> alice.vpn.lab:5353 over UDP answered '$got'"
# Two local senders are two flows, each answered on its own.
P1=$(free_port); P2=$(free_port)
udp_ask "$TO_ALICE" from-p1 "$P1" >"$LAB/u1" & u1=$!
udp_ask "$TO_ALICE" from-p2 "$P2" >"$LAB/u2"
wait "$u1"
a=$(cat "$LAB/u1"); b=$(cat "$LAB/u2")
[[ $a == from-p1 && $b == from-p2 ]] || fail "two senders' flows mixed up: '$a' / '$b'"
a=$(udp_ask "$TO_ALICE" again-p1 "$P1")
[[ $a == again-p1 ]] || fail "the first sender's flow, again: '$a'"
ok "bob's UDP forward reaches alice's exposed udp:5353 by name, one flow per local sender"

got=$(udp_ask "$TO_WHO" who)
[[ $got == "$bob_ip" ]] || fail "the internal UDP server saw '$got', not bob's address $bob_ip"
ok "an internal UDP server sees bob's intranet address ($got)"

got=$(timeout 10 dig +short +tries=1 +time=3 @127.0.0.1 -p "$TO_DNS" alice.vpn.lab A) \
    || fail "dig through bob's UDP forward failed"
[[ $got == "$alice_ip" ]] || fail "dig through the forward answered '$got', not $alice_ip"
ok "dig through bob's UDP forward to the gateway's DNS: alice.vpn.lab = $got"

# A source that policy denies: no answer, the drop counted, nothing hangs.
cat > "$LAB/conf/policy.conf" <<'POL'
deny  user:bob     user:alice  *  udp
allow 127.0.0.0/8  *           *  any
POL
reload_policy
got=$(udp_ask "$TO_ALICE" denied "$(free_port)")
[[ -z $got ]] || fail "a denied UDP flow bob -> alice was answered: '$got'"
ok "policy 'deny user:bob user:alice udp': bob's new flow gets no answer"

# Flows end with their sessions; each leaves an audit line.
kill -TERM "$CLIENT_PID_bob"; wait "$CLIENT_PID_bob" 2>/dev/null || true
kill -TERM "$CLIENT_PID_alice"; wait "$CLIENT_PID_alice" 2>/dev/null || true
wait_until 3000 bash -c "grep '\"event\":\"audit\"' '$LAB/logs/forwarder.log' | grep -q '\"kind\":\"device\",\"proto\":\"udp\".*\"src_user\":\"bob\",\"user\":\"alice\".*\"verdict\":\"allowed\"'" \
    || fail "no allowed device-to-device UDP audit line: $(audit_lines | tail -3)"
audit_lines | grep '"kind":"outbound","proto":"udp"' | grep -q "\"src\":\"$bob_ip\".*\"port\":$WHO_PORT,\"verdict\":\"allowed\".*\"bytes_from_device\":4," \
    || fail "no outbound UDP audit line for bob -> $WHO_PORT: $(audit_lines | grep outbound | tail -3)"
audit_lines | grep -q '"proto":"udp".*"src_user":"bob".*"verdict":"denied"' \
    || fail "bob's denied UDP flow is not audited: $(audit_lines | tail -3)"
ok "audited: bob -> alice udp allowed and denied, bob -> $WHO_PORT outbound udp (4 bytes out)"
