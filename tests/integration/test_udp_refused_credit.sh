#!/usr/bin/env bash
# Issue 4, flow control: flows refused at the device's side give the
# session's credit back. The first datagram of a new inbound flow travels
# with its open and spends the session's credit (RB_SESSION_WINDOW, 4 MiB);
# when the edge refuses the flow (here: the tunnel's max_streams, 4, is
# reached) nobody will report that datagram taken. An internal sender
# spraying 150 source ports with 60 KB datagrams would otherwise leave the
# session held: none of its datagrams, and none of its TCP streams' bytes,
# would reach the device until the refused flows idle out.
. "$(dirname "$0")/lib.sh"
lab_start --set edge.max_streams=4
DEV_ECHO=$(free_port)
udp_echo "$DEV_ECHO"
client_start alice alice --expose udp:5353=127.0.0.1:$DEV_ECHO
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
ip=$(json_field "$LAB/alice.json" ip)

SRC=$(free_port)
ask() { echo "$1" | timeout 3 socat -T 1 - UDP4:"$ip":5353,bind=127.0.0.1:"$SRC" 2>/dev/null || true; }
answers() { [[ $(ask "$1") == "$1" ]]; }
wait_until 5000 answers before || fail "alice's exposed udp:5353 does not answer"

refused() { metric "$FORWARDER_STATUS_URL" 'reachback_forwarder_inbound_total{verdict="refused"}'; }
refused_before=$(refused)
python3 - "$ip" <<'PY'
import socket, sys, time
for i in range(150):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.sendto(b"s" * 60000, (sys.argv[1], 5353))
    u.close()
    time.sleep(0.002)
PY
many_refused() { (( $(refused) - refused_before >= 100 )); }
wait_until 5000 many_refused \
    || fail "the edge refused $(( $(refused) - refused_before )) of 150 sprayed flows, wanted at least 100"
ok "150 source ports sprayed with 60 KB datagrams: $(( $(refused) - refused_before )) flows refused by the edge (max_streams 4)"

got=$(ask after)
[[ $got == after ]] || fail "after the spray alice's first flow gets no answer ('$got'): the refused flows kept the session's credit"
ok "after the spray the session's credit is back: alice's first flow still answers"
