#!/usr/bin/env bash
# Wrong passwords and unknown users get the same answer; repeated failures
# are rate-limited per user and per source address, even for the right
# password; metrics count them.
. "$(dirname "$0")/lib.sh"
lab_start --set edge.auth_max_failures=3 --set edge.auth_max_failures_per_addr=8 \
          --set edge.auth_lockout_s=30

logon() {   # logon USER PASSWORD_FILE: prints "rc|last line of stderr"
    local rc=0 out
    out=$("$BIN/reachback-client" connect --server "$EDGE_ADDR" --ca "$CA" --user "$1" \
        --password-file "$2" 2>&1 </dev/null) || rc=$?
    echo "$rc|$(echo "$out" | tail -n1)"
}

echo wrong-password > "$LAB/wrong.pw"
bad=$(logon alice "$LAB/wrong.pw")
unknown=$(logon mallory "$LAB/wrong.pw")
[[ ${bad%%|*} == 4 ]] || fail "wrong password: want exit 4, got '$bad'"
[[ $bad == "$unknown" ]] || fail "unknown user answered differently: '$bad' vs '$unknown'"
ok "wrong password and unknown user: same answer ($bad)"

# alice has 1 failure; two more lock her out; then even her real password is refused.
logon alice "$LAB/wrong.pw" >/dev/null
logon alice "$LAB/wrong.pw" >/dev/null
locked=$(logon alice "$USER_ALICE_PASSWORD_FILE")
[[ ${locked%%|*} == 5 ]] || fail "locked-out user with the right password: want exit 5, got '$locked'"
ok "per-user rate limit: $locked"

# carol is not locked out by alice's failures.
client_start c1 carol
good=$(wait_until 10000 test -s "$LAB/c1.json" && echo yes || true)
[[ $good == yes ]] || fail "carol could not log on while alice is locked out: $(cat "$LAB/c1.out")"
ok "other users still log on"

# Per address: failures spread over many user names from one address.
for u in u1 u2 u3 u4 u5 u6; do logon "$u" "$LAB/wrong.pw" >/dev/null; done
addr=$(logon bob "$USER_BOB_PASSWORD_FILE")
[[ ${addr%%|*} == 5 ]] || fail "per-address limit did not apply: '$addr'"
ok "per-address rate limit: $addr"

failed=$(curl -sf "$EDGE_STATUS_URL/metrics" | awk '/^reachback_logons_total\{result="bad_credentials"\}/ { print $2 }')
limited=$(curl -sf "$EDGE_STATUS_URL/metrics" | awk '/^reachback_logons_total\{result="rate_limited"\}/ { print $2 }')
# 8 wrong passwords counted from this address (alice x3, mallory, u1..u4);
# refused unchecked: alice's right password, u5, u6 and bob.
[[ ${failed%.*} == 8 && ${limited%.*} == 4 ]] || fail "metrics: bad_credentials=$failed rate_limited=$limited, want 8 and 4"
ok "metrics count $failed bad credentials, $limited rate-limited"
grep -q '"event":"logon_failed"' "$LAB/logs/edge.log" || grep -q 'logon_failed\|auth_failed' "$LAB/logs/edge.log" \
    || fail "edge did not log the failures"
! grep -q "wrong-password" "$LAB/logs/edge.log" || fail "the edge logged a password"
ok "failures logged, passwords never"
