#!/usr/bin/env bash
# Issue 3, point 8: reachback-ctl against the broker's admin API, with the
# address and token from lab.env only (set -a; . lab.env): sessions, show,
# whois, pools, kick (the device is told "closed by administrator", exit
# 13). A wrong or missing token gets 401; an unknown user or address 404.
. "$(dirname "$0")/lib.sh"
lab_start --edges 2
E2=$(edge_addr 2)

client_start a1 alice
client_start_at b1 bob "$E2"
for d in a1 b1; do
    wait_until 10000 test -s "$LAB/$d.json" || fail "$d did not log on: $(cat "$LAB/$d.out")"
done
ip_a=$(json_field "$LAB/a1.json" ip); fqdn_a=$(json_field "$LAB/a1.json" fqdn)
ip_b=$(json_field "$LAB/b1.json" ip)

# ctl ARGS...: reachback-ctl in a shell that only knows lab.env.
ctl() { env -i PATH="$PATH" bash -c 'set -a; . "$1/lab.env"; set +a; shift; "$BIN_DIR/reachback-ctl" "$@"' _ "$LAB" "$@"; }

out=$(ctl sessions) || fail "ctl sessions failed: $out"
echo "$out"
head -n 1 <<<"$out" | grep -qi "user" || fail "sessions: no header line"
for col in ip device edge since; do head -n 1 <<<"$out" | grep -qi "$col" || fail "sessions: no '$col' column"; done
line=$(grep -w alice <<<"$out") || fail "sessions does not list alice"
for v in "$ip_a" "$fqdn_a" a1 edge1; do grep -qF -- "$v" <<<"$line" || fail "alice's row lacks '$v': $line"; done
grep -w bob <<<"$out" | grep -qF edge2 || fail "bob's row does not say edge2"
ok "sessions: a table with alice ($ip_a, $fqdn_a, a1, edge1) and bob (edge2)"

out=$(ctl show alice) || fail "ctl show alice failed: $out"
for v in "$ip_a" "$fqdn_a" a1 edge1 "$(json_field "$LAB/a1.json" session)"; do
    grep -qF -- "$v" <<<"$out" || fail "show alice lacks '$v': $out"
done
ok "show alice"

out=$(ctl whois "$ip_b") || fail "ctl whois failed: $out"
grep -qw bob <<<"$out" || fail "whois $ip_b does not name bob: $out"
ok "whois $ip_b: bob"

out=$(ctl pools) || fail "ctl pools failed: $out"
echo "$out"
grep -qF "${POOL%/*}" <<<"$out" || fail "pools does not show $POOL: $out"
for col in size used free; do grep -qi "$col" <<<"$out" || fail "pools has no '$col': $out"; done
json=$(curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN_URL/admin/pools") || fail "GET /admin/pools failed"
tr -d ' ' <<<"$json" | grep -q '"used":2' || fail "/admin/pools does not count 2 used: $json"
ok "pools: $POOL with 2 used"

# Errors: unknown user and address, wrong token, no token.
rc=0; out=$(ctl show nobody 2>&1) || rc=$?
(( rc != 0 )) || fail "show of an unknown user succeeded: $out"
[[ $(http_code -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN_URL/admin/sessions/nobody") == 404 ]] \
    || fail "unknown user is not 404"
[[ $(http_code -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN_URL/admin/whois/10.255.255.1") == 404 ]] \
    || fail "unknown address is not 404"
ok "unknown user and address: 404 (ctl exit $rc)"
rc=0; out=$(env -i PATH="$PATH" ADMIN_URL="$ADMIN_URL" ADMIN_TOKEN=wrong "$BIN/reachback-ctl" sessions 2>&1) || rc=$?
(( rc != 0 )) || fail "a wrong token listed sessions: $out"
grep -qiE "401|unauthori[sz]ed|token" <<<"$out" || fail "a wrong token: unclear error '$out'"
for path in sessions sessions/alice whois/$ip_a pools; do
    [[ $(http_code "$ADMIN_URL/admin/$path") == 401 ]] || fail "GET /admin/$path without a token is not 401"
    [[ $(http_code -H "Authorization: Bearer wrong" "$ADMIN_URL/admin/$path") == 401 ]] || fail "GET /admin/$path with a wrong token is not 401"
done
[[ $(http_code -X POST "$ADMIN_URL/admin/kick/alice") == 401 ]] || fail "POST /admin/kick without a token is not 401"
client_running a1 || fail "an unauthorised kick closed alice"
ok "wrong or missing token: 401 (ctl exit $rc: $(tail -n 1 <<<"$out"))"

# Flags beat the environment.
out=$(env -i PATH="$PATH" "$BIN/reachback-ctl" sessions --url "$ADMIN_URL" --token "$ADMIN_TOKEN" 2>&1) \
    || out=$(env -i PATH="$PATH" "$BIN/reachback-ctl" --url "$ADMIN_URL" --token "$ADMIN_TOKEN" sessions 2>&1) \
    || fail "ctl with --url and --token failed: $out"
grep -qw alice <<<"$out" || fail "ctl with flags does not list alice: $out"
ok "address and token from flags"

# kick: the device is told, the name and lease go.
t0=$(now_ms)
out=$(ctl kick alice) || fail "ctl kick alice failed: $out"
wait_exit a1 1000 || fail "alice's device still runs 1 s after the kick"
[[ $EXIT_RC == 13 ]] || fail "kicked device exit $EXIT_RC, want 13 ($(cat "$LAB/a1.out"))"
grep -q "closed by administrator" "$LAB/a1.out" || fail "the device did not say why: $(cat "$LAB/a1.out")"
ok "kick: the device exited 13 after $(( $(now_ms) - t0 )) ms, 'closed by administrator'"
wait_until 1000 bash -c "dig @$DNS_ADDR -p $DNS_PORT +time=1 +tries=1 $fqdn_a A | grep -q NXDOMAIN" \
    || fail "alice's name outlived the kick"
[[ $(rcli SISMEMBER rb:ip:leased "$ip_a") == 0 ]] || fail "$ip_a still leased after the kick"
out=$(ctl sessions)
! grep -qw alice <<<"$out" || fail "sessions still lists alice: $out"
rc=0; out=$(ctl kick alice 2>&1) || rc=$?
(( rc != 0 )) || fail "kicking a user without a session succeeded: $out"
ok "after the kick: no name, no lease, not listed; a second kick fails (exit $rc)"
