#!/usr/bin/env bash
# Issue 4, point 3: alice's --forward and --socks carry her connections into
# the internal network; names are resolved on the gateway side (internal
# names and <user>.<suffix>), and the internal server sees alice's intranet
# address as the source.
. "$(dirname "$0")/lib.sh"
lab_start
WHO_PORT=$(free_port); HTTP_PORT=$(free_port); BOB_HTTP=$(free_port)
bg python3 "$PEER" whoami "$WHO_PORT"
wait_until 5000 listening "$WHO_PORT" || fail "whoami server did not start"
mkdir -p "$LAB/www" "$LAB/bobwww"
echo "internal page" > "$LAB/www/index.html"
echo "bob's page" > "$LAB/bobwww/index.html"
bg python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$LAB/www"
wait_until 5000 listening "$HTTP_PORT" || fail "internal web server did not start"
bg python3 -m http.server "$BOB_HTTP" --bind 127.0.0.1 --directory "$LAB/bobwww"
wait_until 5000 listening "$BOB_HTTP" || fail "bob's web server did not start"

client_start bob bob --expose tcp:80=127.0.0.1:$BOB_HTTP
client_start alice alice --forward 127.0.0.1:0:127.0.0.1:$WHO_PORT \
    --forward 0:localhost:$HTTP_PORT --socks 127.0.0.1:0
wait_until 10000 test -s "$LAB/alice.json" || fail "alice did not log on: $(cat "$LAB/alice.out")"
wait_until 10000 test -s "$LAB/bob.json" || fail "bob did not log on: $(cat "$LAB/bob.out")"
ip=$(json_field "$LAB/alice.json" ip)
ports=$(sed -n 's/.*"listen_ports":\[\([0-9,]*\)\].*/\1/p' "$LAB/alice.json")
IFS=, read -r FWD1 FWD2 SOCKS <<<"$ports"
[[ -n $SOCKS ]] || fail "status file has no listen ports: $(cat "$LAB/alice.json")"

# --forward to an address: the server sees alice's intranet address.
got=$(timeout 5 ncat 127.0.0.1 "$FWD1" </dev/null) || fail "--forward to the whoami server failed"
[[ $got == "$ip" ]] || fail "the internal server saw '$got', want alice's $ip"
ok "--forward 127.0.0.1:$FWD1 -> 127.0.0.1:$WHO_PORT: the server saw $got"

# --forward to a name the gateway resolves.
got=$(curl -sf --max-time 5 "http://127.0.0.1:$FWD2/") || fail "--forward to localhost:$HTTP_PORT failed"
[[ $got == "internal page" ]] || fail "--forward fetched '$got'"
ok "--forward to a name (localhost, resolved by the gateway) fetched the internal page"
# The device sends a request and its half-close at once, without waiting
# for the open's answer: the forwarder keeps both while it looks the name up.
got=$(printf 'GET / HTTP/1.0\r\n\r\n' | timeout 5 ncat 127.0.0.1 "$FWD2") \
    || fail "a request and half-close sent at once through --forward to a name failed"
[[ $got == *"internal page"* ]] || fail "request + half-close through --forward got '$got'"
ok "a request and its half-close sent before the open was answered reached the server"

# SOCKS5 with names resolved on the gateway: an internal name, and bob.
got=$(curl -sf --max-time 5 --socks5-hostname 127.0.0.1:"$SOCKS" "http://localhost:$HTTP_PORT/") \
    || fail "curl --socks5-hostname to localhost failed"
[[ $got == "internal page" ]] || fail "SOCKS fetched '$got'"
got=$(curl -sf --max-time 5 --socks5-hostname 127.0.0.1:"$SOCKS" "http://bob.$DNS_SUFFIX/") \
    || fail "curl --socks5-hostname to bob.$DNS_SUFFIX failed"
[[ $got == "bob's page" ]] || fail "SOCKS to bob fetched '$got'"
ok "curl --socks5-hostname reaches localhost:$HTTP_PORT and bob.$DNS_SUFFIX:80"
got=$(curl -s --http0.9 --max-time 5 --socks5 127.0.0.1:"$SOCKS" "http://127.0.0.1:$WHO_PORT/" 2>&1 || true)
[[ $got == "$ip"* ]] || fail "SOCKS by address: the server saw '$got'"
ok "SOCKS by address: the server saw alice's $ip"

# Failures come back as SOCKS reply codes: refused (5), unknown name (4).
rc=0; curl -sS --max-time 5 --socks5-hostname 127.0.0.1:"$SOCKS" "http://127.0.0.1:1/" 2>"$LAB/c1" || rc=$?
grep -q "(5)" "$LAB/c1" || fail "a refused connect: curl said $(cat "$LAB/c1") (rc $rc)"
rc=0; curl -sS --max-time 8 --socks5-hostname 127.0.0.1:"$SOCKS" "http://no-such-host.invalid/" 2>"$LAB/c2" || rc=$?
grep -q "(4)" "$LAB/c2" || fail "an unknown name: curl said $(cat "$LAB/c2") (rc $rc)"
ok "SOCKS replies: refused -> 5, unknown name -> 4"
audit_lines | grep -q '"kind":"outbound".*"src_user":"alice".*"verdict":"allowed"' \
    || fail "no audit line for alice's outbound connections"
ok "outbound connections are audited"
