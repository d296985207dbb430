#!/usr/bin/env bash
# Hostile input on every port: non-TLS bytes and garbage or oversized frames
# on the TLS port, malformed DNS packets, garbage protobuf and unknown CURVE
# keys on ZeroMQ sockets. Each gets a logged error; every service keeps
# serving everyone else.
. "$(dirname "$0")/lib.sh"
lab_start
ZPOKE=$BIN/rb-zpoke
edge_host=${EDGE_ADDR%:*} edge_port=${EDGE_ADDR##*:}
client_start d1 alice
wait_until 10000 test -s "$LAB/d1.json" || fail "alice did not log on"
ip=$(json_field "$LAB/d1.json" ip)

# --- TLS port ---
head -c 4096 /dev/urandom | timeout 5 ncat "$edge_host" "$edge_port" >/dev/null 2>&1 || true
printf 'GET / HTTP/1.1\r\nHost: x\r\n\r\n' | timeout 5 ncat "$edge_host" "$edge_port" >/dev/null 2>&1 || true
tls_send() {   # tls_send FILE: a real TLS 1.3 session that sends FILE's bytes
    timeout 5 openssl s_client -quiet -tls1_3 -connect "$EDGE_ADDR" -CAfile "$CA" \
        -verify_return_error <"$1" >/dev/null 2>&1 || true
}
head -c 3000 /dev/urandom > "$LAB/garbage.bin"; tls_send "$LAB/garbage.bin"
# CONTROL frame header claiming a 4 GiB payload.
printf '\x01\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff' > "$LAB/huge.bin"; tls_send "$LAB/huge.bin"
# Unknown frame type, then a CONTROL frame whose protobuf is garbage.
printf '\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01x' > "$LAB/type.bin"; tls_send "$LAB/type.bin"
printf '\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04\xff\xff\xff\xff' > "$LAB/pb.bin"; tls_send "$LAB/pb.bin"
sleep 0.5
grep -c '"level":"warn"' "$LAB/logs/edge.log" >/dev/null || fail "edge logged no warnings"
n=$(grep -cE 'protocol|tls|frame' "$LAB/logs/edge.log" || true)
(( n >= 4 )) || fail "edge logged only $n protocol/TLS errors for 6 bad connections"
proc_running "$CLIENT_PID_d1" || fail "alice's session died from other people's garbage"
client_start d2 bob
wait_until 10000 test -s "$LAB/d2.json" || fail "bob cannot log on after the garbage: $(cat "$LAB/d2.out")"
ok "TLS port: garbage, non-TLS, oversized and bad frames refused and logged; alice stays, bob logs on"

# --- DNS port (UDP and TCP) ---
dns_udp() { printf "$1" > /dev/udp/"$DNS_ADDR"/"$DNS_PORT"; }
dns_udp '\x12'                                                  # shorter than a header
dns_udp '\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05alic'   # truncated question
dns_udp '\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01'   # pointer to itself
dns_udp '\x12\x34\x01\x00\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x01\x00\x01'       # huge counts
head -c 512 /dev/urandom > "$LAB/dns.bin"; cat "$LAB/dns.bin" > /dev/udp/"$DNS_ADDR"/"$DNS_PORT"
printf '\xff\xff' | timeout 3 ncat "$DNS_ADDR" "$DNS_PORT" >/dev/null 2>&1 || true   # TCP: length, no body
head -c 700 /dev/urandom | timeout 3 ncat "$DNS_ADDR" "$DNS_PORT" >/dev/null 2>&1 || true
[[ $(dig_short "alice.$DNS_SUFFIX" A) == "$ip" ]] || fail "DNS stopped answering after malformed packets"
[[ $(dig +tcp @"$DNS_ADDR" -p "$DNS_PORT" +short "alice.$DNS_SUFFIX" A) == "$ip" ]] || fail "DNS over TCP stopped answering"
formerr=$(metric "$DNS_STATUS_URL" 'reachback_dns_queries_total{rcode="FORMERR"}')
[[ -n $formerr && ${formerr%.*} -ge 1 ]] || fail "no FORMERR counted (got '$formerr')"
grep -qi 'malformed\|formerr' "$LAB/logs/dns.log" || fail "dns logged nothing about malformed packets"
ok "DNS: malformed packets answered FORMERR or dropped, logged, counted ($formerr); service goes on"

# --- ZeroMQ: CURVE refuses unknown keys; garbage protobuf is dropped ---
broker_edge=$(awk '$1 == "listen_edge" { print $3 }' "$LAB/conf/broker.conf")
keys=$LAB/keys
ping_ok="0000000000000001 08016200"     # request id 1, EdgeToBroker{version 1, ping {}}
"$ZPOKE" "$broker_edge" "$keys/broker.pub" "$keys/edge.key" 3000 $ping_ok | grep -q "^reply" \
    || fail "a ping with the edge's key got no reply (the tool or the broker is broken)"
! "$ZPOKE" "$broker_edge" "$keys/broker.pub" new 1500 $ping_ok | grep -q "^reply" \
    || fail "a ping with an unknown CURVE key was answered"
grep -q 'zap_refused' "$LAB/logs/broker.log" || fail "broker did not log the refused key"
ok "CURVE: known key answered, unknown key refused and logged"
"$ZPOKE" "$broker_edge" "$keys/broker.pub" "$keys/edge.key" 0 deadbeef                      # one frame
"$ZPOKE" "$broker_edge" "$keys/broker.pub" "$keys/edge.key" 0 0000000000000002 ffffffffff0a # bad protobuf
"$ZPOKE" "$broker_edge" "$keys/broker.pub" "$keys/edge.key" 0 0000000000000003 08636200   # version 99
"$ZPOKE" "$broker_edge" "$keys/broker.pub" "$keys/edge.key" 0 00 01 02 03 04              # five frames
"$ZPOKE" "$broker_edge" "$keys/broker.pub" "$keys/edge.key" 0 0000000000000004 ""         # empty body
ipalloc_ep=$(awk '$1 == "listen" { print $3 }' "$LAB/conf/ipalloc.conf")
"$ZPOKE" "$ipalloc_ep" "$keys/ipalloc.pub" "$keys/broker.key" 0 0000000000000005 ffffffffff0a
snap_ep=$(awk '$1 == "listen_snapshot" { print $3 }' "$LAB/conf/broker.conf")
"$ZPOKE" "$snap_ep" "$keys/broker.pub" "$keys/dns.key" 0 0000000000000006 ffffffffff0a
"$ZPOKE" "$broker_edge" "$keys/broker.pub" "$keys/edge.key" 3000 $ping_ok | grep -q "^reply" \
    || fail "broker stopped answering after garbage"
grep -q 'bad_message\|bad_request\|malformed' "$LAB/logs/broker.log" || fail "broker logged no bad message"
grep -q 'bad_message\|bad_request\|malformed' "$LAB/logs/ipalloc.log" || fail "ipalloc logged no bad message"
client_start d3 carol
wait_until 10000 test -s "$LAB/d3.json" || fail "carol cannot log on after ZeroMQ garbage: $(cat "$LAB/d3.out")"
for s in BROKER IPALLOC DNS FORWARDER EDGE; do
    url_var=${s}_STATUS_URL
    [[ $(http_code "${!url_var}/readyz") == 200 ]] || fail "$s not ready after the garbage"
done
ok "ZeroMQ garbage logged and dropped; every service still ready; carol logs on"

# --- status HTTP ---
printf 'GARBAGE\r\n\r\n' | timeout 3 ncat 127.0.0.1 "${EDGE_STATUS_URL##*:}" >/dev/null 2>&1 || true
head -c 100000 /dev/urandom | curl -s -o /dev/null -X POST --data-binary @- "$BROKER_STATUS_URL/status" || true
[[ $(http_code "$EDGE_STATUS_URL/healthz") == 200 ]] || fail "edge status HTTP died"
[[ $(http_code "$BROKER_STATUS_URL/healthz") == 200 ]] || fail "broker status HTTP died"
ok "status HTTP survives garbage"
