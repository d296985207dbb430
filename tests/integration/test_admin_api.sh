#!/usr/bin/env bash
# The broker's admin API straight over HTTP (reachback-ctl is tested in
# test_ctl.sh): every route with and without the bearer token, the JSON
# shapes, 404 for unknown users and addresses, and a kick: the session
# ends, its address goes back, and alice's device exits 13 ("closed by
# administrator"; the device side of kicks is the edge's event stream).
. "$(dirname "$0")/lib.sh"
lab_start

client_start a1 alice
wait_until 10000 test -s "$LAB/a1.json" || fail "alice did not log on: $(cat "$LAB/a1.out")"
ip=$(json_field "$LAB/a1.json" ip); sid=$(json_field "$LAB/a1.json" session)
AUTH=(-H "Authorization: Bearer $ADMIN_TOKEN")
get() { curl -sf --max-time 3 "${AUTH[@]}" "$ADMIN_URL$1"; }

for path in sessions sessions/alice "whois/$ip" pools; do
    [[ $(http_code "$ADMIN_URL/admin/$path") == 401 ]] || fail "GET /admin/$path without a token is not 401"
    [[ $(http_code -H "Authorization: Bearer x$ADMIN_TOKEN" "$ADMIN_URL/admin/$path") == 401 ]] \
        || fail "GET /admin/$path with a wrong token is not 401"
done
[[ $(http_code -X POST "$ADMIN_URL/admin/kick/alice") == 401 ]] || fail "a kick without a token is not 401"
client_running a1 || fail "an unauthorised kick closed alice"
ok "no or wrong token: 401 on every route"

out=$(get /admin/sessions) || fail "GET /admin/sessions failed"
[[ $out == \[* ]] || fail "sessions is not a JSON array: $out"
for k in '"user":"alice"' "\"ip\":\"$ip\"" "\"session\":\"$sid\"" '"fqdn":"' '"device":"' \
         '"edge":"' '"source":"' '"since_ms":' '"last_seen_ms":'; do
    grep -qF -- "$k" <<<"$out" || fail "sessions lacks $k: $out"
done
out=$(get /admin/sessions/alice) || fail "GET /admin/sessions/alice failed"
[[ $out == \{* ]] && grep -qF "\"session\":\"$sid\"" <<<"$out" || fail "sessions/alice: $out"
out=$(get "/admin/whois/$ip") || fail "GET /admin/whois/$ip failed"
grep -qF '"user":"alice"' <<<"$out" || fail "whois $ip: $out"
out=$(get /admin/pools) || fail "GET /admin/pools failed"
tr -d ' ' <<<"$out" | grep -q '"used":1' || fail "pools does not count alice's address: $out"
ok "sessions, sessions/alice, whois/$ip and pools answer JSON"

[[ $(http_code "${AUTH[@]}" "$ADMIN_URL/admin/sessions/nobody") == 404 ]] || fail "unknown user is not 404"
[[ $(http_code "${AUTH[@]}" "$ADMIN_URL/admin/whois/10.255.255.1") == 404 ]] || fail "unknown address is not 404"
[[ $(http_code "${AUTH[@]}" "$ADMIN_URL/admin/whois/nonsense") == 400 ]] || fail "a bad address is not 400"
[[ $(http_code "${AUTH[@]}" "$ADMIN_URL/admin/kick/alice") == 405 ]] || fail "GET of a kick is not 405"
[[ $(http_code "${AUTH[@]}" -X POST "$ADMIN_URL/admin/kick/nobody") == 404 ]] || fail "kick of nobody is not 404"
curl -s "${AUTH[@]}" "$ADMIN_URL/admin/sessions/nobody" | grep -q '"error"' || fail "404 without a JSON error"
client_running a1 || fail "alice died of the error checks"
ok "unknown user or address: 404 with a JSON error; bad address 400; GET kick 405"

kicks0=$(metric "$BROKER_STATUS_URL" reachback_kicks_total)
out=$(curl -sf --max-time 3 "${AUTH[@]}" -X POST "$ADMIN_URL/admin/kick/alice") || fail "POST /admin/kick/alice failed"
grep -qF '"kicked":true' <<<"$out" && grep -qF "\"session\":\"$sid\"" <<<"$out" || fail "kick answer: $out"
[[ $(http_code "${AUTH[@]}" "$ADMIN_URL/admin/sessions/alice") == 404 ]] || fail "alice still has a session"
wait_until 2000 bash -c "[[ \$(redis-cli -s '$REDIS_SOCKET' SISMEMBER rb:ip:leased '$ip') == 0 ]]" \
    || fail "$ip still leased after the kick"
[[ $(metric "$BROKER_STATUS_URL" reachback_kicks_total) == $(( ${kicks0:-0} + 1 )) ]] \
    || fail "reachback_kicks_total did not count the kick"
ok "kick: answered with the session; no session, no lease; counted"
# The device side: edges close the tunnel on SESSION_DOWN(kicked) and the
# client exits 13.
wait_exit a1 2000 || fail "alice's device still runs 2 s after the kick"
[[ $EXIT_RC == 13 ]] || fail "kicked device exit $EXIT_RC, want 13 ($(cat "$LAB/a1.out"))"
ok "the kicked device exited 13"
