#!/usr/bin/env bash
# Issue 4, points 1 and 6: alice exposes ssh (a real sshd on her device),
# a TCP service on another local port and a UDP service. From the internal
# network, a real ssh to alice's name (resolved through reachback-dns), a
# TCP client to port 5900 and UDP datagrams to port 5353 reach them and get
# their answers; each connection writes an audit line and shows in
# /metrics. The lab's edge-forwarder link is TCP with CURVE here, as
# between hosts in production (the other tests use the lab's ipc://):
# every byte above crosses it encrypted, and a key the forwarder does not
# know gets nothing. UDP flows end after 2 s without a datagram.
. "$(dirname "$0")/lib.sh"
RB_LAB_DATA_LINK=tcp lab_start --set forwarder.udp_idle_s=2
link=$(awk '$1 == "data_endpoint" { print $3 }' "$LAB/conf/forwarder.conf")
[[ $link == tcp://* ]] || fail "the data link is '$link', not TCP"

# alice's local services: sshd, a TCP echo, a UDP echo.
SSHD_PORT=$(free_port); TCP_PORT=$(free_port); UDP_PORT=$(free_port)
sshd_setup $SSHD_PORT
bg /usr/sbin/sshd -D -e -f "$LAB/ssh/sshd_config" 2>"$LAB/sshd.out"
wait_until 5000 listening "$SSHD_PORT" || fail "sshd did not start: $(cat "$LAB/sshd.out")"
echo_server "$TCP_PORT"
udp_echo "$UDP_PORT"
# Two services that test when the device says the stream is open (it holds
# StreamResult{OK} back to ride with its first frame): one never writes,
# one writes a banner and closes at once.
QUIET_PORT=$(free_port); BANNER_PORT=$(free_port)
bg socat TCP-LISTEN:"$QUIET_PORT",bind=127.0.0.1,reuseaddr,fork SYSTEM:'sleep 10'
bg socat TCP-LISTEN:"$BANNER_PORT",bind=127.0.0.1,reuseaddr,fork SYSTEM:'echo banner'
wait_until 5000 listening "$BANNER_PORT" || fail "banner service did not start"

client_start alice alice --expose tcp:22=127.0.0.1:$SSHD_PORT \
    --expose tcp:5900=127.0.0.1:$TCP_PORT --expose udp:5353=127.0.0.1:$UDP_PORT \
    --expose tcp:5901=127.0.0.1:$QUIET_PORT --expose tcp:5902=127.0.0.1:$BANNER_PORT
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
ip=$(dig_short alice."$DNS_SUFFIX")
[[ $ip == $(json_field "$LAB/alice.json" ip) ]] || fail "DNS says '$ip' for alice"
wait_until 3000 bash -c "curl -sf $FORWARDER_STATUS_URL/status | grep -q '\"attached_sessions\":1'" \
    || fail "alice's session is not attached at the forwarder: $(curl -s "$FORWARDER_STATUS_URL/status")"

# 1. ssh to alice's name: a real ssh, a real sshd at the device.
out=$(timeout 20 ssh -n -F /dev/null -p 22 -i "$LAB/ssh/user_key" -o BatchMode=yes -o ConnectTimeout=5 \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    "$(id -un)@$ip" 'echo "via sshd at $SSH_CONNECTION"') || fail "ssh to alice.$DNS_SUFFIX ($ip) failed"
[[ $out == "via sshd at "* ]] || fail "ssh printed '$out'"
ok "ssh alice.$DNS_SUFFIX -> $ip:22 reached the device's sshd ($out)"

# 2. TCP 5900 -> 127.0.0.1:TCP_PORT on the device, 1 MB both ways intact.
head -c 1000000 /dev/urandom > "$LAB/blob"
want=$(md5sum < "$LAB/blob")
got=$(timeout 10 ncat "$ip" 5900 < "$LAB/blob" | md5sum)
[[ $got == "$want" ]] || fail "1 MB through port 5900 came back different"
ok "1 MB echoed intact through $ip:5900 (device's 127.0.0.1:$TCP_PORT)"

# 3. UDP 5353 -> 127.0.0.1:UDP_PORT on the device, from one source port.
UDP_SRC=$(free_port)
got=$(echo "udp-ping" | timeout 5 socat -T 1 - UDP4:"$ip":5353,bind=127.0.0.1:$UDP_SRC) || true
[[ $got == "udp-ping" ]] || fail "UDP echo through $ip:5353 answered '$got'"
ok "UDP datagram to $ip:5353 answered by the device's 127.0.0.1:$UDP_PORT"
# The flow ends 2 s after its last datagram: audited then, with its bytes.
udp_line() { audit_lines | grep '"kind":"inbound","proto":"udp"' | grep "\"src\":\"127.0.0.1:$UDP_SRC\""; }
wait_until 6000 udp_line || fail "no audit line for the UDP flow from port $UDP_SRC: $(audit_lines | tail -3)"
line=$(udp_line | head -1)
for k in '"user":"alice"' '"port":5353,' '"verdict":"allowed"' '"bytes_to_device":9,' \
         '"bytes_from_device":9,' '"reason":"idle"'; do
    [[ $line == *"$k"* ]] || fail "UDP audit line lacks $k: $line"
done
flows=$(metric "$FORWARDER_STATUS_URL" reachback_forwarder_udp_flows)
[[ ${flows%.*} == 0 ]] || fail "$flows UDP flows still open after they went idle"
# The same source again is a new flow, answered as the first was.
got=$(echo "udp-again" | timeout 5 socat -T 1 - UDP4:"$ip":5353,bind=127.0.0.1:$UDP_SRC) || true
[[ $got == "udp-again" ]] || fail "UDP after the idle end answered '$got'"
ok "the idle UDP flow ended after 2 s and was audited (9 bytes each way); the next datagram opened a new one"

# The device's OK reaches the forwarder before the stream's first bytes
# and without any: both connections are audited as allowed, not failed.
got=$(timeout 5 ncat --recv-only "$ip" 5902) || true
[[ $got == banner ]] || fail "the banner service through $ip:5902 said '$got'"
python3 - "$ip" <<'PY' || fail "could not connect to the quiet service"
import socket, struct, sys, time
s = socket.create_connection((sys.argv[1], 5901), timeout=5)
time.sleep(0.5)  # the service says nothing; then an abortive close
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
PY
wait_until 3000 bash -c "grep -q '\"port\":5901' '$LAB/logs/forwarder.log' && grep -q '\"port\":5902' '$LAB/logs/forwarder.log'" \
    || fail "no audit lines for ports 5901/5902: $(audit_lines | tail -3)"
audit_lines | grep -q '"port":5902,.*"verdict":"allowed"' \
    || fail "banner stream not audited as allowed: $(audit_lines | grep '"port":5902')"
audit_lines | grep -q '"port":5901,.*"verdict":"allowed"' \
    || fail "quiet stream not audited as allowed: $(audit_lines | grep '"port":5901')"
ok "a stream that answers at once and one that never answers are both audited as allowed"

# 6. Audit lines and metrics.
wait_until 3000 bash -c "grep -q '\"verdict\":\"allowed\"' '$LAB/logs/forwarder.log' && grep -q '\"port\":5900' '$LAB/logs/forwarder.log'" \
    || fail "no audit lines for the connections: $(audit_lines | tail -3)"
line=$(audit_lines | grep '"port":5900' | head -1)
for k in '"src":"127.0.0.1:' '"user":"alice"' "\"dst\":\"$ip\"" '"verdict":"allowed"' \
         '"bytes_to_device":1000000' '"bytes_from_device":1000000' '"duration_ms":' '"ts":'; do
    [[ $line == *"$k"* ]] || fail "audit line lacks $k: $line"
done
audit_lines | grep -q '"port":22,.*"verdict":"allowed"' || fail "no audit line for ssh"
ok "audit: time, source, user, port, verdict, bytes each way, duration ($(audit_lines | wc -l) lines)"
# ssh, 5900, 5901, 5902 and two UDP flows.
allowed=$(metric "$FORWARDER_STATUS_URL" 'reachback_forwarder_inbound_total{verdict="allowed"}')
(( ${allowed%.*} == 6 )) || fail "inbound_total{allowed} is '$allowed', want 6"
bytes=$(metric "$FORWARDER_STATUS_URL" 'reachback_forwarder_bytes_total{direction="to_device"}')
(( ${bytes%.*} >= 1000000 )) || fail "bytes_total{to_device} is '$bytes'"
ok "metrics: $allowed inbound connections allowed, $bytes bytes to devices"

# CURVE on the data link: an edge key the forwarder knows is answered, a
# key it has never seen is not (and the forwarder logs the refusal).
hello_msg=$(hello_frames)
# shellcheck disable=SC2086  # the header and the payload are two frames
"$BIN/rb-zpoke" "$link" "$LAB/keys/forwarder.pub" "$LAB/keys/edge.key" 3000 $hello_msg | grep -q '^reply' \
    || fail "a Hello with the edge's key got no HelloAck"
# shellcheck disable=SC2086
if "$BIN/rb-zpoke" "$link" "$LAB/keys/forwarder.pub" new 1500 $hello_msg >/dev/null; then
    fail "a Hello with a key the forwarder does not know was answered"
fi
wait_until 3000 grep -q '"event":"zap_refused".*key not allowed' "$LAB/logs/forwarder.log" \
    || fail "the forwarder did not log the unknown key"
echo ping | timeout 3 ncat "$ip" 5900 | grep -q ping || fail "alice's port broke after the unknown key"
ok "data link over TCP: the edge's CURVE key is answered, an unknown key is not"
