#!/usr/bin/env bash
# Issue 4, several forwarders: the pool is split in two blocks, one per
# forwarder (serve_cidrs); every edge links to both. Each session is
# attached to the forwarder that serves its address, and only there: its
# exposed port answers through that forwarder (audited there), and its
# outbound connections leave from that forwarder with its address. A policy
# rule with a group source applies to devices served by the other forwarder
# too (the groups travel with the session events).
. "$(dirname "$0")/lib.sh"
# 12 users: all in one half by chance has odds of 1 in 2048.
USERS=u1,u2,u3,u4,u5,u6,u7,u8,u9,u10,u11,u12
# Odd users are in group teama, even ones in teamb.
UGROUPS=()
for i in $(seq 1 12); do UGROUPS+=(--user-groups "u$i=team$( ((i % 2)) && echo a || echo b)"); done
lab_start --users "$USERS" "${UGROUPS[@]}" --set "forwarder.serve_cidrs=127.{X}.0.0/17" \
    --set "edge.forwarder_endpoints=ipc://$LAB/run/data/forwarder.sock,ipc://$LAB/run/data/forwarder2.sock"
X=$(cut -d. -f2 <<<"$POOL")
# The second forwarder: the other half of the pool, its own link and status.
F2_STATUS=$(free_port)
sed -e "s/^forwarder_id = .*/forwarder_id = forwarder2/" \
    -e "s|^status_listen = .*|status_listen = 127.0.0.1:$F2_STATUS|" \
    -e "s|^data_endpoint = .*|data_endpoint = ipc://$LAB/run/data/forwarder2.sock|" \
    -e "s|^serve_cidrs = .*|serve_cidrs = 127.$X.128.0/17|" \
    "$LAB/conf/forwarder.conf" > "$LAB/conf/forwarder2.conf"
grep -q "^serve_cidrs = 127.$X.128.0/17" "$LAB/conf/forwarder2.conf" || fail "forwarder2.conf: $(cat "$LAB/conf/forwarder2.conf")"
"$BIN/reachback-forwarder" --config "$LAB/conf/forwarder2.conf" >"$LAB/logs/forwarder2.log" 2>&1 &
echo $! > "$LAB/run/forwarder2.pid"
F2=http://127.0.0.1:$F2_STATUS
wait_until 10000 bash -c "curl -sf $F2/readyz" || fail "forwarder2 not ready: $(tail -3 "$LAB/logs/forwarder2.log")"
wait_until 5000 grep -q '"edge_linked"' "$LAB/logs/forwarder2.log" || fail "no edge linked to forwarder2"
ok "two forwarders: 127.$X.0.0/17 and 127.$X.128.0/17"

ECHO=$(free_port); WHO=$(free_port)
echo_server "$ECHO"
bg python3 "$PEER" whoami "$WHO"
wait_until 5000 listening "$WHO" || fail "whoami did not start"
low=() high=()
for u in ${USERS//,/ }; do
    client_start "$u" "$u" --expose tcp:7003=127.0.0.1:$ECHO --forward 127.0.0.1:0:127.0.0.1:$WHO \
        --socks 127.0.0.1:0
done
for u in ${USERS//,/ }; do
    wait_until 10000 test -s "$LAB/$u.json" || fail "$u did not log on: $(cat "$LAB/$u.out")"
    ip=$(json_field "$LAB/$u.json" ip)
    if (( $(cut -d. -f3 <<<"$ip") < 128 )); then low+=("$u"); else high+=("$u"); fi
done
(( ${#low[@]} > 0 && ${#high[@]} > 0 )) || fail "all sessions in one half (low: ${low[*]}, high: ${high[*]})"
ok "sessions in both halves (forwarder1: ${low[*]}; forwarder2: ${high[*]})"
attached() { curl -sf "$1/status" | sed -n 's/.*"attached_sessions":\([0-9]*\).*/\1/p'; }
wait_until 5000 bash -c "[[ \$(curl -sf $FORWARDER_STATUS_URL/status | sed -n 's/.*\"attached_sessions\":\([0-9]*\).*/\1/p') == ${#low[@]} ]]" \
    || fail "forwarder1 holds $(attached "$FORWARDER_STATUS_URL") sessions, want ${#low[@]}"
wait_until 5000 bash -c "[[ \$(curl -sf $F2/status | sed -n 's/.*\"attached_sessions\":\([0-9]*\).*/\1/p') == ${#high[@]} ]]" \
    || fail "forwarder2 holds $(attached "$F2") sessions, want ${#high[@]}"
ok "each session is attached to exactly one forwarder (${#low[@]} + ${#high[@]})"

check() {   # check USER LOG: the exposed port and the forward go through LOG's forwarder
    local u=$1 log=$2 ip got port
    ip=$(json_field "$LAB/$u.json" ip)
    got=$(echo "$u" | timeout 5 ncat "$ip" 7003) || fail "$u's port 7003 unreachable"
    [[ $got == "$u" ]] || fail "$u's echo said '$got'"
    wait_until 3000 grep -q "\"user\":\"$u\",\"dst\":\"$ip\",\"port\":7003" "$log" \
        || fail "$u's connection not audited in $(basename "$log")"
    port=$(sed -n 's/.*"listen_ports":\[\([0-9]*\),.*/\1/p' "$LAB/$u.json")
    got=$(timeout 5 ncat 127.0.0.1 "$port" </dev/null) || fail "$u's forward failed"
    [[ $got == "$ip" ]] || fail "$u's forward: the server saw '$got', want $ip"
}
check "${low[0]}" "$LAB/logs/forwarder.log"
check "${high[0]}" "$LAB/logs/forwarder2.log"
! grep -q "\"user\":\"${high[0]}\"" "$LAB/logs/forwarder.log" || fail "forwarder1 carried ${high[0]}'s connection"
ok "${low[0]} goes through forwarder1, ${high[0]} through forwarder2 (inbound and outbound)"

# Group sources across forwarders: teama's devices may reach port 7003 of
# anyone, other devices nothing; the internal side as before.
cat > "$LAB/conf/policy.conf" <<'POL'
allow  group:teama  *  7003  tcp
deny   device       *  *     any
allow  127.0.0.0/8  *  *     any
POL
kill -HUP "$(cat "$LAB/run/forwarder.pid")" "$(cat "$LAB/run/forwarder2.pid")"
for log in forwarder forwarder2; do
    wait_until 3000 grep -q '"event":"policy_loaded".*3 rules' "$LAB/logs/$log.log" || fail "$log did not reload the policy"
done
other_half() {   # other_half USER: a user served by the other forwarder
    local x
    if [[ " ${low[*]} " == *" $1 "* ]]; then x=("${high[@]}"); else x=("${low[@]}"); fi
    echo "${x[0]}"
}
via_socks() {   # via_socks FROM TO: FROM's device connects to TO's port 7003
    local socks ip
    socks=$(sed -n 's/.*"listen_ports":\[[0-9]*,\([0-9]*\)\].*/\1/p' "$LAB/$1.json")
    ip=$(json_field "$LAB/$2.json" ip)
    echo "$1" | timeout 5 ncat --proxy-type socks5 --proxy 127.0.0.1:"$socks" "$ip" 7003 2>&1
}
a=u1; b=u2
ta=$(other_half $a); tb=$(other_half $b)
got=$(via_socks $a "$ta") || true
[[ $got == "$a" ]] || fail "$a (teama) could not reach $ta on the other forwarder: '$got'"
got=$(via_socks $b "$tb") || true
[[ $got != "$b" ]] || fail "$b (teamb) reached $tb: the deny rule did not apply"
audit_lines() { cat "$LAB/logs/forwarder.log" "$LAB/logs/forwarder2.log" | grep '"event":"audit"' || true; }
wait_until 3000 bash -c "cat '$LAB/logs/forwarder.log' '$LAB/logs/forwarder2.log' | grep '\"event\":\"audit\"' | grep -q '\"src_user\":\"$b\",\"user\":\"$tb\".*\"verdict\":\"denied\"'" \
    || fail "no denied audit line for $b -> $tb: $(audit_lines | grep "\"src_user\":\"$b\"" | tail -2)"
ok "group:teama as a source: $a reaches $ta across forwarders, $b (teamb) is denied $tb"
