#!/usr/bin/env bash
# A service killed makes the /readyz of those that depend on it answer 503
# (with the reason), and they recover when it returns. /healthz stays 200.
. "$(dirname "$0")/lib.sh"
lab_start

for s in BROKER IPALLOC DNS FORWARDER EDGE; do
    url_var=${s}_STATUS_URL
    [[ $(http_code "${!url_var}/readyz") == 200 ]] || fail "$s not ready at start"
    [[ $(http_code "${!url_var}/healthz") == 200 ]] || fail "$s /healthz"
    curl -sf "${!url_var}/status" | grep -q '"ready":true' || fail "$s /status not ready"
    # Read whole first: grep -q leaving early would cut curl off mid-write
    # (SIGPIPE, a failed pipeline under pipefail) once /metrics outgrows
    # what one write hands the pipe.
    metrics=$(curl -sf --max-time 5 "${!url_var}/metrics") || fail "$s /metrics unreachable"
    grep -q '^# TYPE ' <<<"$metrics" || fail "$s /metrics empty"
done
ok "every service ready, healthy, with status and metrics"

"$ROOT/scripts/lab" kill --dir "$LAB" ipalloc
wait_until 5000 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' $BROKER_STATUS_URL/readyz) == 503 ]]" \
    || fail "broker still ready 5 s after ipalloc died"
curl -s "$BROKER_STATUS_URL/readyz" | grep -qi ipalloc || fail "broker's 503 does not name ipalloc"
[[ $(http_code "$BROKER_STATUS_URL/healthz") == 200 ]] || fail "broker not healthy"
ok "ipalloc down: broker /readyz 503 ($(curl -s "$BROKER_STATUS_URL/readyz"))"
# A logon now fails cleanly with "unavailable" instead of hanging.
rc=0
timeout 15 "$BIN/reachback-client" connect --server "$EDGE_ADDR" --ca "$CA" --user alice \
    --password-file "$USER_ALICE_PASSWORD_FILE" >"$LAB/x.out" 2>&1 </dev/null || rc=$?
[[ $rc == 6 ]] || fail "logon without ipalloc: exit $rc, want 6 ($(cat "$LAB/x.out"))"
ok "logon without ipalloc fails with exit 6: $(tail -n1 "$LAB/x.out")"
"$ROOT/scripts/lab" revive --dir "$LAB" ipalloc
wait_until 5000 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' $BROKER_STATUS_URL/readyz) == 200 ]]" \
    || fail "broker not ready again after ipalloc returned"
ok "ipalloc back: broker ready"

"$ROOT/scripts/lab" kill --dir "$LAB" broker
for s in EDGE DNS FORWARDER; do
    url_var=${s}_STATUS_URL
    wait_until 6000 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' ${!url_var}/readyz) == 503 ]]" \
        || fail "$s still ready 6 s after the broker died"
done
ok "broker down: edge, dns, forwarder /readyz 503"
"$ROOT/scripts/lab" revive --dir "$LAB" broker
for s in EDGE DNS FORWARDER; do
    url_var=${s}_STATUS_URL
    wait_until 8000 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' ${!url_var}/readyz) == 200 ]]" \
        || fail "$s not ready again after the broker returned"
done
ok "broker back: edge, dns, forwarder ready"

"$ROOT/scripts/lab" kill --dir "$LAB" redis
wait_until 6000 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' $BROKER_STATUS_URL/readyz) == 503 ]]" \
    || fail "broker still ready without redis"
wait_until 6000 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' $IPALLOC_STATUS_URL/readyz) == 503 ]]" \
    || fail "ipalloc still ready without redis"
ok "redis down: broker and ipalloc /readyz 503"
"$ROOT/scripts/lab" revive --dir "$LAB" redis
wait_until 8000 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' $BROKER_STATUS_URL/readyz) == 200 ]]" \
    || fail "broker not ready after redis returned"
client_start d1 alice
wait_until 10000 test -s "$LAB/d1.json" || fail "no logon after everything returned: $(cat "$LAB/d1.out")"
wait_until 1000 bash -c "[[ -n \$(dig @$DNS_ADDR -p $DNS_PORT +short alice.$DNS_SUFFIX) ]]" || fail "no DNS after recovery"
ok "after recovery alice logs on and resolves"
